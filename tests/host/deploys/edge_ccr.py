"""Only the edge and the router (quick iterations on the ccr task)."""

from tasks.ccr import ccr
from tasks.edge import edge

edge()
ccr()
