// MicroPython "application" of the emulated ESP32 board (simulator/esp32).
//
// Runs the real MicroPython WebAssembly port and exposes its REPL on stdin/stdout as raw
// bytes, the way the UART0 of an ESP32 running MicroPython does. The board process (Python)
// owns the TCP port and pipes bytes to and from this process while the application runs.
//
// Contract:
//   node board.mjs --fs DIR [--heap BYTES] [--rpc-in FD --rpc-out FD]
//   - DIR mirrors the device filesystem (the "vfs" flash partition). It is loaded at boot and
//     written back (changed files written, removed files deleted) after every command the
//     REPL executes (Ctrl-D) and at every soft reset, before the command's output is sent.
//   - A missing DIR is a blank partition: MicroPython formats it and creates boot.py.
//   - Raw-paste mode (Ctrl-E 'A' Ctrl-A) is answered "R\x00" (unsupported): the WebAssembly
//     REPL hangs in raw-paste, so mpremote falls back to the plain raw REPL.
//   - Ctrl-D on an empty raw-REPL line is a soft reset: a fresh interpreter (empty heap) with
//     the same files, back in the same REPL mode.
//   - With --rpc-in/--rpc-out (pipes to the board process, simulator/esp32/board.py), the board
//     runs boot.py then main.py at power-on, after a reset and after a soft reset from the
//     friendly REPL, with the board's modules from rom/ (time, select, socket, network, machine,
//     dht, esp, esp32, ntptime): each blocking call is one synchronous JSON request on those
//     pipes (rom/_bridge.py). The board process answers when the operation is done, owns the
//     TCP sockets, the watchdog and the resets, and answers Ctrl-C on UART0 to the pending call
//     (KeyboardInterrupt), so main.py stops into the REPL. Files the app writes reach DIR when
//     it flushes or closes them (a power cut keeps what LittleFS would have committed).
//     The app's output is "cooked" (\n sent as \r\n), as the ESP32 port's UART0 does.
//   - Diagnostics go to stderr, never stdout.
import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const SYSTEM_DIRS = new Set(["tmp", "home", "dev", "proc", "rom"]);
const ROM_DIR = path.join(path.dirname(new URL(import.meta.url).pathname), "rom");
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
    hidden = ("tmp", "home", "dev", "proc", "rom")  # Emscripten's own directories, not on a device
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
  const args = { fs: null, heap: 110 * 1024, rpcIn: null, rpcOut: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--fs") args.fs = argv[++i];
    else if (argv[i] === "--heap") args.heap = parseInt(argv[++i], 10);
    else if (argv[i] === "--rpc-in") args.rpcIn = parseInt(argv[++i], 10);
    else if (argv[i] === "--rpc-out") args.rpcOut = parseInt(argv[++i], 10);
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

let cooked = false; // while the app runs: \n goes out as \r\n, as the ESP32 port's UART0 does

function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
    }
  }
}

function emit(bytes) {
  if (!bytes.length) return;
  let buf = Buffer.from(bytes);
  if (cooked) buf = Buffer.from(buf.toString("latin1").replace(/(?<!\r)\n/g, "\r\n"), "latin1");
  writeAll(1, buf);
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

// Files the app writes are committed to DIR when flushed (fsync) or closed, one file at a time
// (written to a temporary name, then renamed): a power cut keeps each file as of its last commit.
function persist(devPath) {
  if (!devPath || SYSTEM_DIRS.has(devPath.split("/")[1])) return;
  let data;
  try {
    data = Buffer.from(mp.FS.readFile(devPath));
  } catch (e) {
    return; // removed meanwhile: the next full sync mirrors that
  }
  const target = path.join(fsDir, devPath);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  const tmp = path.join(path.dirname(target), ".edgewire-tmp-" + path.basename(target));
  fs.writeFileSync(tmp, data, { mode: 0o600 });
  fs.renameSync(tmp, target);
  snapshot.set(devPath, data);
}

function hookCommits() {
  const probe = mp.FS.open("/tmp/.probe", "w");
  const ops = probe.stream_ops; // shared by every file of the in-memory filesystem
  mp.FS.close(probe);
  mp.FS.unlink("/tmp/.probe");
  ops.fsync = (stream) => {
    if (stream.ewDirty) {
      stream.ewDirty = false;
      persist(stream.path);
    }
    return 0;
  };
  const write = mp.FS.write;
  mp.FS.write = (stream, ...rest) => {
    const n = write(stream, ...rest);
    stream.ewDirty = true;
    return n;
  };
  const close = mp.FS.close;
  mp.FS.close = (stream) => {
    const dirty = stream.ewDirty;
    const ret = close(stream);
    if (dirty) persist(stream.path);
    return ret;
  };
  // a rename, a removal or a new directory is durable at once on LittleFS: mirror it now
  for (const name of ["rename", "unlink", "rmdir", "mkdir"]) {
    const op = mp.FS[name];
    mp.FS[name] = (...a) => {
      const ret = op(...a);
      if (!SYSTEM_DIRS.has(String(a[0]).split("/")[1])) syncFs();
      return ret;
    };
  }
}

function installRom() {
  mp.FS.mkdir("/rom");
  for (const name of fs.readdirSync(ROM_DIR)) {
    if (name.endsWith(".py")) mp.FS.writeFile("/rom/" + name, fs.readFileSync(path.join(ROM_DIR, name)));
  }
}

// ---- the link to the board process (rom/_bridge.py) ------------------------------------------

let rpcBuf = Buffer.alloc(0);
const rpcChunk = Buffer.alloc(65536);

function rpcCall(request) {
  flushOut();
  writeAll(args.rpcOut, Buffer.from(request + "\n"));
  for (;;) {
    const nl = rpcBuf.indexOf(10);
    if (nl >= 0) {
      const line = rpcBuf.subarray(0, nl).toString();
      rpcBuf = rpcBuf.subarray(nl + 1);
      return line;
    }
    let n;
    try {
      n = fs.readSync(args.rpcIn, rpcChunk, 0, rpcChunk.length, null);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
      continue;
    }
    if (n === 0) process.exit(0); // the board process is gone: power off
    rpcBuf = Buffer.concat([rpcBuf, rpcChunk.subarray(0, n)]);
  }
}

// boot.py, then main.py if boot.py did not fail, as the ESP32 port's main.c does after a reset.
// The raw REPL's soft reset runs boot.py only (main.c runs main.py in the friendly REPL's mode
// only): boot.py puts the app's slot on sys.path, so mpremote imports what the board runs.
function runApp(runMain = true) {
  cooked = true;
  try {
    mp.runPython("_boot_ok = __import__('_boot').run('boot.py')"); // runPython returns no value
    const ok = mp.globals.get("_boot_ok");
    mp.globals.delete("_boot_ok");
    if (ok && runMain) mp.runPython("__import__('_boot').run('main.py')");
  } finally {
    flushOut();
    cooked = false;
    syncFs();
    if (runMain) rpcCall('{"op": "repl"}');
  }
}

async function boot(runScripts = true) {
  ensureHostFs();
  mp = await loadMicroPython({
    stdout: (b) => {
      if (!muted) for (const c of b) out.push(c);
    },
    linebuffer: false,
    heapsize: args.heap,
  });
  loadFs();
  hookCommits();
  mp.runPython(ERRNO_SHIM);
  if (args.rpcIn !== null) {
    installRom();
    mp.registerJsModule("_board", { call: rpcCall, sync: () => syncFs() });
    rpcCall(JSON.stringify({ op: "boot", app: runScripts })); // a soft reset closes the sockets
    mp.runPython("import sys\nsys.path.insert(2, '/rom')\n__import__('_boot')\ndel sys");
    runApp(runScripts);
  }
  mp.replInit();
}

async function softReset() {
  flushOut();
  syncFs();
  emit(Buffer.from("MPY: soft reboot\r\n"));
  muted = rawMode;
  await boot(!rawMode); // the raw REPL's soft reset skips main.py, as on the board
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
