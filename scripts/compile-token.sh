#!/usr/bin/env bash
# Compiles contracts/EIP3009Token.sol with the project-local solc-js (tools/node_modules, installed by
# scripts/setup.sh) and writes contracts/EIP3009Token.json (ABI + creation and runtime bytecode). The artifact is
# committed, so building and testing need no compiler; `--check` recompiles and fails if the committed artifact
# does not match the source.
set -euo pipefail
cd "$(dirname "$0")/.."
solc="tools/node_modules/solc"
[ -d "$solc" ] || { echo "solc-js is not installed in tools/node_modules: run scripts/setup.sh" >&2; exit 1; }
mode="${1:-write}"
case "$mode" in write|--check) ;; *) echo "usage: $0 [--check]" >&2; exit 2 ;; esac
SOLC="$PWD/$solc" MODE="$mode" node - <<'JS'
const fs = require("fs");
const solc = require(process.env.SOLC);
const source = "contracts/EIP3009Token.sol";
const artifact = "contracts/EIP3009Token.json";
// Optimizer on (200 runs) and cancun, which anvil 1.7.1 runs; only the outputs the artifact keeps.
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { EIP3009Token: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const input = { language: "Solidity", sources: { [source]: { content: fs.readFileSync(source, "utf8") } }, settings };
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);
const c = output.contracts[source].EIP3009Token;
const json = JSON.stringify({
  contractName: "EIP3009Token",
  sourceName: source,
  compiler: `solc ${solc.version()}`,
  settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion },
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
  deployedBytecode: "0x" + c.evm.deployedBytecode.object,
}, null, 2) + "\n";
if (process.env.MODE === "--check") {
  const committed = fs.existsSync(artifact) ? fs.readFileSync(artifact, "utf8") : "";
  if (committed !== json) {
    console.error(`${artifact} does not match ${source}: run scripts/compile-token.sh and commit the result`);
    process.exit(1);
  }
  console.log(`${artifact} matches ${source}`);
} else {
  fs.writeFileSync(artifact, json);
  console.log(`wrote ${artifact} (${(c.evm.bytecode.object.length / 2)} bytes of creation code)`);
}
JS
