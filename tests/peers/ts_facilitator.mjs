// The official x402 TypeScript facilitator (@x402/core 2.27 `x402Facilitator` + @x402/evm `exact`), served over
// loopback HTTP as a differential oracle for ours: POST /verify, POST /settle, GET /supported.
//
//   node tests/peers/ts_facilitator.mjs [--rpc-url URL] [--network eip155:31337] [--port 0]
//   env: X402_PEER_RPC_URL, X402_PEER_PRIVATE_KEY (required; this peer's own account, never the app's
//        facilitator key nor a payer's), X402_PEER_NETWORK, X402_PEER_PORT.
//
// Prints `listening <port>` on stdout once it accepts connections. The packages come from tools/node_modules
// (scripts/setup.sh). Bodies are `{x402Version, paymentPayload, paymentRequirements}`; an unparsable body or one
// without paymentPayload/paymentRequirements is 400, an exception from the SDK is 500 with its message (the
// reference throws on some malformed payloads: the caller sees why).
import { createRequire } from "node:module";
import http from "node:http";

const require = createRequire(new URL("../../tools/package.json", import.meta.url));
const { x402Facilitator } = require("@x402/core/facilitator");
const { registerExactEvmScheme } = require("@x402/evm/exact/facilitator");
const { toFacilitatorEvmSigner } = require("@x402/evm");
const { createWalletClient, defineChain, http: transport, publicActions } = require("viem");
const { privateKeyToAccount } = require("viem/accounts");

function arg(name, env, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i > 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[env] ?? fallback;
}

const rpcUrl = arg("rpc-url", "X402_PEER_RPC_URL", "http://127.0.0.1:8545");
const network = arg("network", "X402_PEER_NETWORK", "eip155:31337");
const port = Number(arg("port", "X402_PEER_PORT", "0"));
const key = process.env.X402_PEER_PRIVATE_KEY;
if (!key) {
  console.error("X402_PEER_PRIVATE_KEY is required (this facilitator's own dev account key)");
  process.exit(2);
}
const chainId = Number(network.split(":")[1]);

const account = privateKeyToAccount(key);
const chain = defineChain({
  id: chainId,
  name: `local ${chainId}`,
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpcUrl] } },
});
const client = createWalletClient({ account, chain, transport: transport(rpcUrl) }).extend(publicActions);
const signer = toFacilitatorEvmSigner({
  address: account.address,
  getCode: (a) => client.getCode(a),
  readContract: (a) => client.readContract({ ...a, args: a.args || [] }),
  verifyTypedData: (a) => client.verifyTypedData(a),
  writeContract: (a) => client.writeContract({ ...a, args: a.args || [] }),
  sendTransaction: (a) => client.sendTransaction(a),
  waitForTransactionReceipt: (a) => client.waitForTransactionReceipt(a),
});
const facilitator = new x402Facilitator();
registerExactEvmScheme(facilitator, { signer, networks: network });

function send(res, status, value) {
  const body = JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v));
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

async function handle(req, res) {
  const path = (req.url || "").split("?")[0];
  if (req.method === "GET" && path === "/supported") return send(res, 200, facilitator.getSupported());
  if (req.method !== "POST" || (path !== "/verify" && path !== "/settle")) {
    return send(res, 404, { error: `no route ${req.method} ${path}` });
  }
  const chunks = [];
  for await (const c of req) chunks.push(c);
  let body;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch (e) {
    return send(res, 400, { error: `body is not JSON: ${e.message}` });
  }
  if (body === null || typeof body !== "object" || !body.paymentPayload || !body.paymentRequirements) {
    return send(res, 400, { error: "body needs paymentPayload and paymentRequirements" });
  }
  const run = path === "/verify" ? facilitator.verify : facilitator.settle;
  send(res, 200, await run.call(facilitator, body.paymentPayload, body.paymentRequirements));
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    if (!res.headersSent) send(res, 500, { error: String(e && e.message ? e.message : e) });
  });
});
server.keepAliveTimeout = 30_000;
server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
