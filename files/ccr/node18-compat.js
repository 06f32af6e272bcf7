// Managed by RAVE deploy (tasks/ccr.py): loaded with `node --require` before CCR's bundle.
// CCR 1.0.73 bundles undici 7, which expects the global File of Node >= 20 at load time;
// Node 18 (Debian 12) has the same class as require("node:buffer").File. No-op on newer Node.
globalThis.File ??= require("node:buffer").File;
