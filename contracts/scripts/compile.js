#!/usr/bin/env node
// Compiles src/TkmsRegistry.sol with the pinned solc (npm `solc`, JS build) and writes a
// deterministic artifact {contractName, sourceName, abi, bytecode, deployedBytecode, compiler}.
// Usage: node scripts/compile.js <output-dir>
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const solc = require(path.join(root, 'node_modules', 'solc'));
const settings = require('./solc-settings.json');

const CONTRACTS = [{ sourceName: 'src/TkmsRegistry.sol', contractName: 'TkmsRegistry' }];

const outDir = path.resolve(process.argv[2] || path.join(root, 'artifacts'));
const sources = {};
for (const c of CONTRACTS) {
  sources[c.sourceName] = { content: fs.readFileSync(path.join(root, c.sourceName), 'utf8') };
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    ...settings,
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
  },
};

function findImports(p) {
  const full = path.join(root, p);
  if (!full.startsWith(root + path.sep)) return { error: `import outside contracts/: ${p}` };
  try {
    return { contents: fs.readFileSync(full, 'utf8') };
  } catch (e) {
    return { error: `cannot read ${p}: ${e.message}` };
  }
}

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
let failed = false;
for (const err of output.errors || []) {
  process.stderr.write((err.formattedMessage || err.message) + '\n');
  if (err.severity === 'error') failed = true;
}
if (failed) process.exit(1);

fs.mkdirSync(outDir, { recursive: true });
for (const c of CONTRACTS) {
  const out = output.contracts[c.sourceName][c.contractName];
  const artifact = {
    contractName: c.contractName,
    sourceName: c.sourceName,
    abi: out.abi,
    bytecode: '0x' + out.evm.bytecode.object,
    deployedBytecode: '0x' + out.evm.deployedBytecode.object,
    compiler: { version: solc.version(), settings },
  };
  const file = path.join(outDir, `${c.contractName}.json`);
  fs.writeFileSync(file, JSON.stringify(artifact, null, 2) + '\n');
  process.stdout.write(`wrote ${path.relative(process.cwd(), file)} (${out.evm.deployedBytecode.object.length / 2} bytes runtime)\n`);
}
