// MicroPython "application" of the emulated ESP32 board (simulator/esp32).
//
// Runs the real MicroPython WebAssembly port and exposes its REPL on stdin/stdout as raw
// bytes, the way the UART0 of an ESP32 running MicroPython does. The board process (Python)
// owns the TCP port and pipes bytes to and from this process while the application runs.
//
// Contract:
//   node board.mjs --fs DIR [--heap BYTES]
//   - DIR mirrors the device filesystem (the "vfs" flash partition). It is loaded at boot and
//     written back (changed files written, removed files deleted) after every command the
//     REPL executes (Ctrl-D) and at every soft reset, before the command's output is sent.
//   - A missing DIR is a blank partition: MicroPython formats it and creates boot.py.
//   - Raw-paste mode (Ctrl-E 'A' Ctrl-A) is answered "R\x00" (unsupported): the WebAssembly
//     REPL hangs in raw-paste, so mpremote falls back to the plain raw REPL.
//   - Ctrl-D on an empty raw-REPL line is a soft reset: a fresh interpreter (empty heap) with
//     the same files, back in the same REPL mode.
//   - boot.py and main.py are NOT executed (this port has no machine/network modules).
//   - Diagnostics go to stderr, never stdout.
import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const SYSTEM_DIRS = new Set(["tmp", "home", "dev", "proc"]);
// The WebAssembly port raises OSError with Emscripten errno numbers (ENOENT is 44) while its
// errno module and every real MicroPython port use the POSIX numbers (ENOENT is 2); tools such
// as mpremote and code such as `e.errno == errno.ENOENT` depend on the latter. This shim,
// run at every interpreter start, maps them at the filesystem entry points.
const ERRNO_SHIM = `
def _edgewire_errno_shim():
    import builtins, os
    m = {63: 1, 44: 2, 29: 5, 8: 9, 48: 12, 2: 13, 10: 16, 20: 17, 75: 18, 54: 20, 31: 21,
         28: 22, 41: 23, 33: 24, 51: 28, 69: 30, 37: 36, 55: 39}
    def wrap(f):
        def call(*a, **k):
            if a and a[0] == "":  # "" is the current directory on a device's VFS
                a = (".",) + a[1:]
            try:
                return f(*a, **k)
            except OSError as e:
                n = e.errno
                if n in m:
                    raise OSError(m[n])
                raise
        return call
    ilistdir = os.ilistdir
    hidden = ("tmp", "home", "dev", "proc")  # Emscripten's own directories, not on a device
    def ilistdir_sized(path="."):
        root = path in ("/", "") or (path == "." and os.getcwd() == "/")
        base = path if path.endswith("/") else path + "/"
        for ent in ilistdir(path):
            if root and ent[0] in hidden:
                continue
            if ent[1] == 0x8000 and (len(ent) < 4 or not ent[3]):
                ent = (ent[0], ent[1], ent[2], os.stat(base + ent[0])[6])
            elif len(ent) < 4:
                ent = (ent[0], ent[1], ent[2], 0)
            yield ent
    os.ilistdir = ilistdir_sized
    listdir = os.listdir
    def listdir_visible(path="."):
        root = path in ("/", "") or (path == "." and os.getcwd() == "/")
        return [n for n in listdir(path) if not (root and n in hidden)]
    os.listdir = listdir_visible
    for name in ("stat", "mkdir", "rmdir", "remove", "unlink", "rename", "listdir",
                 "ilistdir", "chdir", "statvfs"):
        if hasattr(os, name):
            setattr(os, name, wrap(getattr(os, name)))
    builtins.open = wrap(builtins.open)
_edgewire_errno_shim()
del _edgewire_errno_shim
`;
const BOOT_PY =
  "# This file is executed on every boot (including wake-boot from deepsleep)\n" +
  "#import esp\n#esp.osdebug(None)\n#import webrepl\n#webrepl.start()\n";

function parseArgs(argv) {
  const args = { fs: null, heap: 128 * 1024 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--fs") args.fs = argv[++i];
    else if (argv[i] === "--heap") args.heap = parseInt(argv[++i], 10);
  }
  if (!args.fs) {
    process.stderr.write("board.mjs: --fs DIR is required\n");
    process.exit(2);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const fsDir = path.resolve(args.fs);

let mp = null;
let out = [];
let muted = false;
let rawMode = false;
let snapshot = new Map(); // device path -> Buffer (files) or null (directories)

function emit(bytes) {
  if (bytes.length) process.stdout.write(Buffer.from(bytes));
}

function flushOut() {
  if (out.length) {
    emit(out);
    out = [];
  }
}

// ---- filesystem mirror -------------------------------------------------------------------

function ensureHostFs() {
  if (!fs.existsSync(fsDir)) {
    fs.mkdirSync(fsDir, { recursive: true });
    fs.writeFileSync(path.join(fsDir, "boot.py"), BOOT_PY);
  }
}

function loadFs() {
  snapshot = new Map();
  const walk = (hostDir, devDir) => {
    for (const ent of fs.readdirSync(hostDir, { withFileTypes: true })) {
      if (devDir === "" && SYSTEM_DIRS.has(ent.name)) continue;
      if (ent.name.startsWith(".edgewire-tmp")) continue;
      const hostPath = path.join(hostDir, ent.name);
      const devPath = devDir + "/" + ent.name;
      if (ent.isDirectory()) {
        mp.FS.mkdir(devPath);
        snapshot.set(devPath, null);
        walk(hostPath, devPath);
      } else if (ent.isFile()) {
        const data = fs.readFileSync(hostPath);
        mp.FS.writeFile(devPath, data);
        snapshot.set(devPath, data);
      }
    }
  };
  walk(fsDir, "");
}

function scanDevice() {
  const now = new Map();
  const walk = (devDir) => {
    for (const name of mp.FS.readdir(devDir === "" ? "/" : devDir)) {
      if (name === "." || name === "..") continue;
      if (devDir === "" && SYSTEM_DIRS.has(name)) continue;
      const devPath = devDir + "/" + name;
      const st = mp.FS.stat(devPath);
      if (mp.FS.isDir(st.mode)) {
        now.set(devPath, null);
        walk(devPath);
      } else if (mp.FS.isFile(st.mode)) {
        now.set(devPath, Buffer.from(mp.FS.readFile(devPath)));
      }
    }
  };
  walk("");
  return now;
}

function syncFs() {
  const now = scanDevice();
  // removals first (deepest paths first), then directories, then files
  const removed = [...snapshot.keys()].filter((p) => !now.has(p) || (now.get(p) === null) !== (snapshot.get(p) === null));
  removed.sort((a, b) => b.length - a.length);
  for (const p of removed) {
    fs.rmSync(path.join(fsDir, p), { recursive: true, force: true });
  }
  const dirs = [...now.keys()].filter((p) => now.get(p) === null).sort();
  for (const p of dirs) fs.mkdirSync(path.join(fsDir, p), { recursive: true });
  for (const [p, data] of now) {
    if (data === null) continue;
    const old = snapshot.get(p);
    if (old && old.equals(data)) continue;
    const target = path.join(fsDir, p);
    const tmp = path.join(path.dirname(target), ".edgewire-tmp-" + path.basename(target));
    fs.writeFileSync(tmp, data, { mode: 0o600 });
    fs.renameSync(tmp, target);
  }
  snapshot = now;
}

// ---- interpreter lifecycle ---------------------------------------------------------------

async function boot() {
  ensureHostFs();
  mp = await loadMicroPython({
    stdout: (b) => {
      if (!muted) for (const c of b) out.push(c);
    },
    linebuffer: false,
    heapsize: args.heap,
  });
  loadFs();
  mp.runPython(ERRNO_SHIM);
  mp.replInit();
}

async function softReset() {
  flushOut();
  syncFs();
  emit(Buffer.from("MPY: soft reboot\r\n"));
  muted = true;
  await boot();
  if (rawMode) {
    out = [];
    await mp.replProcessCharWithAsyncify(0x01);
    muted = false;
    out = [];
    emit(Buffer.from("raw REPL; CTRL-B to exit\r\n>"));
  } else {
    muted = false;
  }
}

// ---- input pump --------------------------------------------------------------------------

const queue = [];
let pumping = false;
let held = []; // bytes of a possible raw-paste request (0x05 'A' 0x01)

function accept(byte) {
  if (held.length === 0) {
    if (byte === 0x05) {
      held.push(byte);
      return;
    }
    queue.push(byte);
    return;
  }
  held.push(byte);
  if (held.length === 2 && byte === 0x41) return;
  if (held.length === 3 && byte === 0x01) {
    held = [];
    queue.push(-1); // marker: answer the raw-paste request in order
    return;
  }
  for (const b of held) queue.push(b);
  held = [];
}

async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    while (queue.length) {
      const c = queue.shift();
      if (c === -1) {
        flushOut();
        emit(Buffer.from("R\x00"));
        continue;
      }
      if (c === 0x01) rawMode = true;
      else if (c === 0x02) rawMode = false;
      // Only Ctrl-D (and Enter in the friendly REPL) runs code; other characters are just
      // buffered by the REPL, so they skip the (slow) asyncify wrapper.
      const ret = c === 0x04 || c === 0x0d ? await mp.replProcessCharWithAsyncify(c) : mp.replProcessChar(c);
      if (ret) {
        await softReset();
        continue;
      }
      if (c === 0x04) syncFs();
      flushOut();
    }
  } catch (err) {
    process.stderr.write("board.mjs: " + (err && err.stack ? err.stack : String(err)) + "\n");
    process.exit(1);
  } finally {
    pumping = false;
  }
}

await boot();
flushOut();
process.stdin.on("data", (data) => {
  for (const b of data) accept(b);
  pump();
});
process.stdin.on("end", () => {
  try {
    syncFs();
  } finally {
    process.exit(0);
  }
});
