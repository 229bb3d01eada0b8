#!/usr/bin/env node
// Smoke test of the committed artifact on a real local chain: starts the npm anvil on a free
// loopback port, deploys artifacts/TkmsRegistry.json with plain JSON-RPC, and checks a few
// writes and the views Nox services read (gateway(), kmsPublicKey() revert before genesis).
// Prints receipt gas for each transaction. Usage: node scripts/anvil-smoke.js
'use strict';
const { spawn } = require('child_process');
const net = require('net');
const path = require('path');
const { keccak256 } = require(path.join(__dirname, '..', 'node_modules', 'js-sha3'));

const root = path.resolve(__dirname, '..');
const anvilBin = path.join(root, 'node_modules', '@foundry-rs', 'anvil-linux-amd64', 'bin', 'anvil');
const artifact = require(path.join(root, 'artifacts', 'TkmsRegistry.json'));

const sel = (sig) => keccak256(sig).slice(0, 8);
const word = (hex) => hex.replace(/^0x/, '').toLowerCase().padStart(64, '0');

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

let url;
let id = 0;
async function rpc(method, params = []) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: ++id, method, params }),
  });
  const body = await res.json();
  if (body.error) {
    const e = new Error(`${method}: ${body.error.message}`);
    e.data = body.error.data;
    throw e;
  }
  return body.result;
}

async function send(from, to, data, label) {
  const hash = await rpc('eth_sendTransaction', [{ from, to, data }]);
  // anvil mines on its own schedule: poll for the receipt (up to 10 s) rather than race it.
  let r = null;
  for (let i = 0; r === null; i++) {
    if (i > 0) await new Promise((done) => setTimeout(done, 50));
    if (i > 200) throw new Error(`${label}: no receipt after 10 s`);
    r = await rpc('eth_getTransactionReceipt', [hash]);
  }
  if (r.status !== '0x1') throw new Error(`${label}: transaction reverted`);
  console.log(`  ${label.padEnd(28)} gasUsed ${parseInt(r.gasUsed, 16)}`);
  return r;
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

async function main() {
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  const anvil = spawn(anvilBin, ['--host', '127.0.0.1', '--port', String(port), '--silent'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  let passed = 0;
  try {
    for (let i = 0; ; i++) {
      try {
        await rpc('eth_chainId');
        break;
      } catch (e) {
        if (i > 100) throw new Error('anvil did not start');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const [owner, manager, gw] = await rpc('eth_accounts');
    console.log(`anvil on ${url}; deploying ${artifact.contractName} (${artifact.compiler.version})`);
    const dep = await send(owner, null, artifact.bytecode, 'deploy');
    const addr = dep.contractAddress;
    const code = await rpc('eth_getCode', [addr, 'latest']);
    assert(code === artifact.deployedBytecode, 'deployed code equals artifact deployedBytecode');
    passed++;

    const call = (data) => rpc('eth_call', [{ to: addr, data }, 'latest']);
    assert((await call('0x' + sel('owner()'))) === '0x' + word(owner), 'owner() is the deployer');
    passed++;

    await send(owner, addr, '0x' + sel('setManager(address)') + word(manager), 'setManager');
    await send(owner, addr, '0x' + sel('addGateway(address)') + word(gw), 'addGateway (first, primary)');
    assert((await call('0x' + sel('gateway()'))) === '0x' + word(gw), 'gateway() is the primary gateway');
    passed++;
    assert((await call('0x' + sel('isGateway(address)') + word(gw))) === '0x' + word('1'), 'isGateway');
    passed++;

    // kmsPublicKey() reverts with NoEpochPublished() before the first epoch
    let data;
    try {
      await call('0x' + sel('kmsPublicKey()'));
    } catch (e) {
      data = e.data;
    }
    assert(data === '0x' + sel('NoEpochPublished()'), `kmsPublicKey() reverts NoEpochPublished (got ${data})`);
    passed++;

    // a stranger cannot add a gateway: NotOwner(address)
    let reverted = false;
    try {
      await rpc('eth_estimateGas', [{ from: gw, to: addr, data: '0x' + sel('addGateway(address)') + word(gw) }]);
    } catch (e) {
      reverted = e.data === '0x' + sel('NotOwner(address)') + word(gw);
    }
    assert(reverted, 'addGateway by a stranger reverts NotOwner');
    passed++;
    console.log(`anvil-smoke: ${passed} passed, 0 failed`);
  } finally {
    anvil.kill('SIGTERM');
  }
}

main().catch((e) => {
  console.error(`anvil-smoke: ${e.message}`);
  console.log('anvil-smoke: 0 passed, 1 failed');
  process.exit(1);
});
