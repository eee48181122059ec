// Run a Python script under real MicroPython (WebAssembly port) in Node.
//
//   node run_mpy.mjs [--heap BYTES] [--deploy] [--put LOCAL:REMOTE]... [--cwd DIR] SCRIPT.py
//
// --deploy copies firmware/*.py (except the PC-side flash.py) to / and protocol/*.py to /protocol/,
// as flashing does.
// --put copies one more local file (or every *.py / *.mpy of a local directory) to REMOTE.
// The script runs in __main__ via runPythonAsync (top-level `await` works); an uncaught exception
// prints its traceback and exits 1. Note: in this port gc.collect() reclaims garbage only after
// control returned to JS (e.g. `await asyncio.sleep(0)`), not garbage made earlier in the same run.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..", "..");

function usage(msg) {
  process.stderr.write(`run_mpy: ${msg}\nusage: node run_mpy.mjs [--heap BYTES] [--deploy] [--put LOCAL:REMOTE]... SCRIPT.py\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
let heap = 110 * 1024;
let script = null;
const puts = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--heap") heap = parseInt(args[++i], 10);
  else if (a === "--deploy") {
    puts.push([path.join(root, "firmware"), "/", new Set(["flash.py"])]);
    puts.push([path.join(root, "protocol"), "/protocol"]);
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
      if ((name.endsWith(".py") || name.endsWith(".mpy")) && !(skip && skip.has(name))) mp.FS.writeFile(path.posix.join(remote, name), fs.readFileSync(path.join(local, name)));
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
