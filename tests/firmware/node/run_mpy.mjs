// Run a Python script under real MicroPython (WebAssembly port) in Node.
//
//   node run_mpy.mjs [--micropython 1.27|1.24.1] [--heap BYTES] [--deploy | --deploy-mpy] [--put LOCAL:REMOTE]... SCRIPT.py
//
// --micropython picks the MicroPython release: 1.27 (default) or 1.24.1, the one `make flash`
// writes to boards (both WebAssembly ports, from npm; see package.json).
// --deploy copies the sources: firmware/*.py (except the PC-side flash.py) to / and protocol/*.py
// to /protocol/.
// --deploy-mpy copies what `make flash` copies (config.json aside): the board files compiled by
// `firmware/flash.py --build` (.mpy, with boot.py and main.py as source; the app in /app_a/), to /,
// and slot A's app to / and /protocol/ as well, so scripts import it without boot.py.
// --put copies one more local file (or every *.py / *.mpy of a local directory tree) to REMOTE.
// The script runs in __main__ via runPythonAsync (top-level `await` works); an uncaught exception
// prints its traceback and exits 1. Note: in this port gc.collect() reclaims garbage only after
// control returned to JS (e.g. `await asyncio.sleep(0)`), not garbage made earlier in the same run.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..", "..");

function usage(msg) {
  process.stderr.write(`run_mpy: ${msg}\nusage: node run_mpy.mjs [--micropython 1.27|1.24.1] [--heap BYTES] [--deploy | --deploy-mpy] [--put LOCAL:REMOTE]... SCRIPT.py\n`);
  process.exit(2);
}

// The board files as `make flash` builds them, in a temporary directory removed at exit.
function buildBoardFiles() {
  const venv = path.join(root, ".venv", "bin", "python");
  const python = fs.existsSync(venv) ? venv : "python3";
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "run-mpy-build-"));
  process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  const out = spawnSync(python, [path.join(root, "firmware", "flash.py"), "--build", dir], { encoding: "utf8" });
  if (out.status !== 0) {
    process.stderr.write(`run_mpy: firmware/flash.py --build failed:\n${out.stdout}${out.stderr}`);
    process.exit(2);
  }
  return dir;
}

const RELEASES = { "1.27": "@micropython/micropython-webassembly-pyscript", "1.24.1": "micropython-1.24.1" };
const args = process.argv.slice(2);
let release = "1.27";
let heap = 110 * 1024;
let script = null;
const puts = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--heap") heap = parseInt(args[++i], 10);
  else if (a === "--micropython") {
    release = args[++i];
    if (!(release in RELEASES)) usage(`--micropython must be one of ${Object.keys(RELEASES).join(", ")}`);
  }
  else if (a === "--deploy") {
    puts.push([path.join(root, "firmware"), "/", new Set(["flash.py", "tools"])]);
    puts.push([path.join(root, "protocol"), "/protocol"]);
  } else if (a === "--deploy-mpy") {
    const built = buildBoardFiles();
    puts.push([built, "/"]);
    puts.push([path.join(built, "app_a"), "/"]); // slot A's app importable without boot.py's sys.path
  } else if (a === "--put") {
    const spec = args[++i] || "";
    const cut = spec.lastIndexOf(":");
    if (cut < 1) usage(`--put needs LOCAL:REMOTE, got ${spec}`);
    puts.push([path.resolve(spec.slice(0, cut)), spec.slice(cut + 1)]);
  } else if (a.startsWith("--")) usage(`unknown option ${a}`);
  else script = a;
}
if (!script) usage("no script given");
if (!Number.isFinite(heap) || heap < 16384) usage("--heap must be at least 16384 bytes");

let failed = false;
const { loadMicroPython } = await import(RELEASES[release]);
const mp = await loadMicroPython({
  heapsize: heap,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => { process.stderr.write(line + "\n"); },
});

function mkdirs(dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { mp.FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}

function put(local, remote, skip) {
  const stat = fs.statSync(local);
  if (stat.isDirectory()) {
    mkdirs(remote);
    for (const name of fs.readdirSync(local).sort()) {
      if (skip && skip.has(name)) continue;
      const full = path.join(local, name);
      if (fs.statSync(full).isDirectory()) {
        if (!name.startsWith(".") && !name.startsWith("__")) put(full, path.posix.join(remote, name));
      } else if (name.endsWith(".py") || name.endsWith(".mpy")) {
        mp.FS.writeFile(path.posix.join(remote, name), fs.readFileSync(full));
      }
    }
  } else {
    mkdirs(path.posix.dirname(remote));
    mp.FS.writeFile(remote, fs.readFileSync(local));
  }
}

for (const [local, remote, skip] of puts) put(local, remote, skip);
const source = fs.readFileSync(script, "utf8");
try {
  await mp.runPythonAsync(source);
} catch (err) {
  failed = true;
  process.stderr.write(String(err.message || err) + "\n");
}
process.exit(failed ? 1 : 0);
