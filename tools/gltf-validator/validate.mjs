#!/usr/bin/env node
// Validate a .glb / .gltf with the Khronos glTF validator (npm package `gltf-validator`).
//
//   npm ci --prefix tools/gltf-validator        # once
//   node tools/gltf-validator/validate.mjs FILE.glb
//
// Prints the report's issue summary as one JSON object
//   {"numErrors": N, "numWarnings": N, "numInfos": N, "numHints": N, "messages": [...]}
// and exits 1 when numErrors > 0, 2 when the file cannot be read or parsed, 0 otherwise.
import { readFile } from "node:fs/promises";
import path from "node:path";
import * as validator from "gltf-validator";

const file = process.argv[2];
if (!file || process.argv.length > 3) {
  console.error("usage: node tools/gltf-validator/validate.mjs FILE.glb");
  process.exit(2);
}

let bytes;
try {
  bytes = new Uint8Array(await readFile(file));
} catch (err) {
  console.error(`cannot read ${file}: ${err.message}`);
  process.exit(2);
}

// External buffers / images of a .gltf are resolved next to the file.
const externalResourceFunction = async (uri) =>
  new Uint8Array(await readFile(path.resolve(path.dirname(file), decodeURIComponent(uri))));

let report;
try {
  report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 0, // unlimited
    writeTimestamp: false,
    externalResourceFunction,
  });
} catch (err) {
  console.error(`cannot validate ${file}: ${err}`);
  process.exit(2);
}

const issues = report.issues;
console.log(JSON.stringify({
  numErrors: issues.numErrors,
  numWarnings: issues.numWarnings,
  numInfos: issues.numInfos,
  numHints: issues.numHints,
  messages: issues.messages,
}));
process.exit(issues.numErrors > 0 ? 1 : 0);
