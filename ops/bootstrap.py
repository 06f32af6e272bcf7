"""First contact with a host reachable only as root with a password (docs/bootstrap.md).

    .venv/bin/pyinfra --user root --ssh-password-prompt --limit rave-prod-1 \\
        inventories/prod.py ops/bootstrap.py

`--ssh-password-prompt` asks for the password (no echo); it never appears on a command line or in
the shell history. The run creates the operator account (operator_user, operator_keys, login
group, sudo without password, validated with visudo -cf), proves from this machine that the
operator logs in with a key and may sudo, and only then switches password logins off (sshd -t
before the reload), checks sshd no longer offers passwords, and locks root's password.
Afterwards: `pyinfra inventories/prod.py deploy.py` as the operator. Running it again as the
operator (without --user root) changes nothing.
"""

from io import StringIO

from pyinfra import host
from pyinfra.facts.files import Sha256File
from pyinfra.facts.server import Which
from pyinfra.operations import apt, files, python, server

from rave import bootstrap as b
from rave.deploykit import authorise_operator_keys, settings

config = settings()
user = config.operator_user
group = b.login_group(config)
# connected as root (the first run) no sudo is needed, nor may it be installed yet
SUDO = host.data.get("ssh_user") != "root"

if not host.get_fact(Which, command="sudo", _sudo=SUDO):
    apt.packages(name="Install sudo", packages=["sudo"], update=True, _sudo=SUDO)

server.group(name=f"SSH login group {group}", group=group, system=True, _sudo=SUDO)
server.user(
    name=f"Operator account {user}",
    user=user,
    groups=[group],
    append=True,
    shell="/bin/bash",
    create_home=True,
    _sudo=SUDO,
)
authorise_operator_keys(config, _sudo=SUDO)

sudoers = b.sudoers_text(user)
if host.get_fact(Sha256File, path=b.SUDOERS_PATH, _sudo=SUDO) != b.sha256(sudoers):
    files.put(
        name="sudo rule candidate",
        src=StringIO(sudoers),
        dest=b.SUDOERS_CANDIDATE,
        user="root",
        group="root",
        mode="440",
        _sudo=SUDO,
    )
    server.shell(
        name=f"Check the sudo rule with visudo -cf, then install {b.SUDOERS_PATH}",
        commands=[
            f"visudo -cf {b.SUDOERS_CANDIDATE} && install -m 440 -o root -g root "
            f"{b.SUDOERS_CANDIDATE} {b.SUDOERS_PATH} && rm -f {b.SUDOERS_CANDIDATE} "
            f"&& visudo -c >/dev/null"
        ],
        _sudo=SUDO,
    )

dropin_done = host.get_fact(Sha256File, path=b.SSHD_DROPIN, _sudo=SUDO) == b.sha256(
    b.SSHD_DROPIN_TEXT
)
root_unlocked = host.get_fact(b.PasswordStatus, user="root", _sudo=SUDO) == "P"

if not dropin_done or root_unlocked:
    # everything above must work BEFORE the password way in is closed
    python.call(
        name=f"{user} logs in with a key from this machine and may sudo (new connection)",
        function=b.check_operator_login,
        user=user,
        group=group,
    )

if not dropin_done:
    files.put(
        name="sshd: no passwords, no root login (drop-in)",
        src=StringIO(b.SSHD_DROPIN_TEXT),
        dest=b.SSHD_DROPIN,
        user="root",
        group="root",
        mode="644",
        create_remote_dir=True,
        _sudo=SUDO,
    )
    server.shell(
        name="Check the sshd config with sshd -t (drop-in removed if refused), reload sshd",
        commands=[
            f"sshd -t || {{ rm -f {b.SSHD_DROPIN}; exit 1; }}",
            "systemctl reload ssh.service",
            b.sshd_check_command(user),
            b.sshd_check_command("root"),
        ],
        _sudo=SUDO,
    )
    python.call(
        name="sshd offers no password login any more (checked from this machine)",
        function=b.check_password_refused,
        users=["root", user],
    )

if root_unlocked:
    server.shell(name="Lock root's password", commands=["passwd -l root"], _sudo=SUDO)
