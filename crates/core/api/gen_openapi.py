"""Writes openapi.json beside this file (python3 crates/core/api/gen_openapi.py): the OpenAPI 3.1 description
of every route. Edit here, regenerate, commit both; esim402_core::routes checks it against the route table."""
import json
E = {"$ref": "#/components/responses/Error"}
def err(desc): return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
def js(ref): return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
owner = [{"simToken": []}, {"signInWithX": []}]
iccid = {"name": "iccid", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{18,20}$"}, "description": "ICCID (Luhn-checked)"}
common = {"400": err("malformed input; `error.field` names it"), "401": err("missing or malformed credential"),
          "404": err("no such SIM, or the credential does not open it (the same answer)"), "405": err("method not allowed; `Allow` lists the methods")}
def pick(*codes): return {c: common[c] for c in codes}
pay_headers = {"PAYMENT-REQUIRED": {"description": "x402 v2 challenge (base64 JSON PaymentRequired)", "schema": {"type": "string"}}}
r402 = {"description": "payment required: the invoice (body, with the x402 v1 `accepts`) and the x402 v2 challenge (`PAYMENT-REQUIRED`)", "headers": pay_headers, "content": js("Invoice402")}
paid_params = [
    {"name": "PAYMENT-SIGNATURE", "in": "header", "schema": {"type": "string"}, "description": "x402 v2 payment (base64 JSON PaymentPayload)"},
    {"name": "X-PAYMENT", "in": "header", "schema": {"type": "string"}, "description": "x402 v1 payment"},
    {"name": "X-Payment-Proof", "in": "header", "schema": {"type": "string"}, "description": "0x-prefixed hash of a USDC transfer that paid the invoice"},
    {"name": "X-Payment-Proof-Signature", "in": "header", "schema": {"type": "string"}, "description": "with X-Payment-Proof: the payer's EIP-191 personal_sign (0x + 130 hex) of `esim402 payment proof\ninvoice: <invoice id>\ntransaction: <tx hash, lower-case>`"},
    {"name": "X-Invoice-Id", "in": "header", "schema": {"type": "string"}, "description": "the invoice a tx-hash proof pays"},
]
paid_headers = {"PAYMENT-RESPONSE": {"description": "x402 settlement response (base64 JSON)", "schema": {"type": "string"}}}
act_ok = {"description": "paid: the SIM, its activation code (`activation_code`, `qr_code`) and its `access_token`", "headers": paid_headers, "content": js("PaidActivation")}
paths = {
 "/health": {"get": {"operationId": "health", "summary": "liveness", "responses": {"200": {"description": "ok"}}}},
 "/health/ready": {"get": {"operationId": "ready", "summary": "readiness: every component loads its configuration (variables, carrier catalog, keys)", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready: `problems` names each component whose configuration does not load and why (the variable, never its value)"}}}},
 "/openapi.json": {"get": {"operationId": "openapi", "summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
 "/supported": {"get": {"operationId": "supported", "summary": "x402 facilitator: supported schemes and networks", "responses": {"200": {"description": "SupportedResponse"}}}},
 "/verify": {"post": {"operationId": "facilitatorVerify", "summary": "x402 facilitator: verify a payment for a third-party resource server", "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["paymentPayload", "paymentRequirements"]}}}}, "responses": {"200": {"description": "VerifyResponse (`isValid`, `invalidReason`)"}, "413": err("body too large"), **pick("400")}}},
 "/settle": {"post": {"operationId": "facilitatorSettle", "summary": "x402 facilitator: settle a verified payment", "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["paymentPayload", "paymentRequirements"]}}}}, "responses": {"200": {"description": "SettleResponse (`success`, `transaction`, `errorReason`)"}, "413": err("body too large"), **pick("400")}}},
 "/v1/esim/activate": {
   "get": {"operationId": "activateGet", "summary": "the same 402 challenge as the POST, for clients that only GET; paying it activates", "parameters": [
       {"name": "region", "in": "query", "required": True, "schema": {"type": "string"}},
       {"name": "data_mb", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1}},
       {"name": "carrier", "in": "query", "schema": {"type": "string"}},
       {"name": "eid", "in": "query", "schema": {"type": "string"}},
       {"name": "chain", "in": "query", "schema": {"type": "string"}, "description": "repeatable"},
       {"name": "payer", "in": "query", "schema": {"type": "string"}},
       {"name": "allow_failover", "in": "query", "schema": {"type": "boolean"}},
       {"name": "invoice_id", "in": "query", "schema": {"type": "string"}}] + paid_params + [{"name": "X-Agent-ID", "in": "header", "schema": {"type": "string"}, "description": "the agent's label, kept with the SIM"}],
     "responses": {"200": act_ok, "402": r402, "409": err("the payment was used already"), **pick("400")}},
   "post": {"operationId": "activate", "summary": "buy an eSIM: 402 with an invoice, or pay it and get the activation code", "parameters": paid_params + [{"name": "X-Agent-ID", "in": "header", "schema": {"type": "string"}, "description": "the agent's label, kept with the SIM"}],
     "requestBody": {"required": True, "content": js("ActivationRequest")},
     "responses": {"200": act_ok, "402": r402, "409": err("the payment was used already"), "413": err("body too large"), **pick("400")}}},
 "/v1/esim": {"get": {"operationId": "listSims", "summary": "the SIMs the signed-in wallet paid for, oldest first, a page at a time (a wallet sign-in: tokens open one SIM each)", "security": [{"signInWithX": []}], "parameters": [
     {"name": "agent_id", "in": "query", "schema": {"type": "string"}, "description": "only this agent's (its X-Agent-ID at activation); a page may then hold fewer than `limit` while more follow"},
     {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "the previous page's `next` (0: the first page)"},
     {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}, "description": "positions of the wallet's index per page (default 100)"}],
   "responses": {"200": {"description": "`{sims: [...], next}`: `next` is the following page's `after`, `null` after the last"}, **pick("400", "401")}}},
 "/v1/invoices/{id}": {"get": {"operationId": "getInvoice", "summary": "an invoice read back from its sealed id", "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}], "responses": {"200": {"description": "the invoice"}, **pick("400", "404")}}},
 "/v1/esim/{iccid}": {"get": {"operationId": "getSim", "summary": "the SIM (no carrier calls)", "security": owner, "parameters": [iccid], "responses": {"200": {"description": "the SIM", "content": js("Sim")}, **pick("400", "401", "404")}}},
}
# The activation code again, for the payer's wallet sign-in only (kept before the lifecycle routes, as served).
activation_ok = {"description": "the activation code", "content": {"application/json": {"schema": {"type": "object", "required": ["iccid", "activation_code"], "properties": {"iccid": {"type": "string"}, "activation_code": {"type": ["string", "null"], "description": "`LPA:1$\u2026` (SGP.22 activation code); null before the carrier confirmed the order"}, "qr_code": {"type": ["string", "null"], "description": "the same string (what a QR code encodes)"}, "profile_state": {"type": "string"}}}}}}
paths["/v1/esim/{iccid}/activation"] = {"get": {"operationId": "activationCode", "summary": "the SIM's activation code, for the payer's wallet sign-in only (an access token is refused): how a payer whose paid answer withheld the code (an x402 v1 payment sent again after its settlement was public) reads it", "security": [{"signInWithX": []}], "parameters": [iccid], "responses": {"200": activation_ok, "400": common["400"], "401": err("missing or malformed credential, or an access token (this route needs the payer's wallet sign-in)"), "404": common["404"]}}}
for action, summ in [("suspend", "suspend the SIM"), ("resume", "resume the SIM"), ("terminate", "terminate the SIM (revokes its access token; unused data is owed back)")]:
    paths[f"/v1/esim/{{iccid}}/{action}"] = {"post": {"operationId": action, "summary": summ, "security": owner, "parameters": [iccid], "responses": {"200": {"description": "the SIM", "content": js("Sim")}, "409": err("invalid transition"), **pick("400", "401", "404")}}}
paths["/v1/esim/{iccid}/switch"] = {"post": {"operationId": "switch", "summary": "move the SIM to another carrier or region: 402 with the switch invoice, or pay it", "security": owner, "parameters": [iccid] + paid_params,
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {"carrier": {"type": "string"}, "region": {"type": "string"}}}}}},
    "responses": {"200": act_ok, "402": r402, "409": err("not switchable, or the payment was used"), "413": err("body too large"), **pick("400", "401", "404")}}}
paths["/v1/esim/{iccid}/token"] = {"post": {"operationId": "rotateToken", "summary": "a new access token; the old one stops working", "security": owner, "parameters": [iccid], "responses": {"200": {"description": "`{iccid, access_token}`"}, "409": err("terminated"), **pick("400", "401", "404")}}}
paths["/v1/esim/{iccid}/refresh"] = {"post": {"operationId": "refresh", "summary": "finish an order the carrier had not confirmed in time", "security": owner, "parameters": [iccid], "responses": {"200": {"description": "the SIM", "content": js("Sim")}, "409": err("its order waits for an `exact` payment that has not settled: send that payment again"), **pick("400", "401", "404")}}}
paths["/v1/esim/{iccid}/data"] = {"post": {"operationId": "quota", "summary": "the next quota (owner or the SIM's carrier); below the low-water mark, or naming `top_up_mb`, 402 with top-up options; with a payment (anyone), the top-up is paid and the grant returned", "security": owner + [{"carrierCredential": []}, {}], "parameters": [iccid] + paid_params,
    "requestBody": {"content": js("QuotaRequest")},
    "responses": {"200": {"description": "granted (`granted_kb`, `remaining_kb`), or the paid top-up", "content": js("Balance")}, "402": r402, "409": err("terminated, or the payment was used"), "413": err("body too large"), **pick("400", "401", "404")}}}
for sub, opid, summ in [("balance", "balance", "the data balance"), ("usage", "usage", "usage per period (and per network)"), ("receipts", "receipts", "the receipt log (accepted / disputed)")]:
    params = [iccid]
    if sub == "usage":
        params += [{"name": "granularity", "in": "query", "schema": {"enum": ["hour", "day"]}}, {"name": "group_by", "in": "query", "schema": {"enum": ["plmn"]}}]
    if sub == "receipts":
        params += [{"name": "from", "in": "query", "schema": {"type": "integer"}, "description": "log position to start at (default 1). Entries carry their position `n`: increasing, not dense (one chunk of positions per batch); page on with the last `n` + 1"}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}]
    paths[f"/v1/esim/{{iccid}}/{sub}"] = {"get": {"operationId": opid, "summary": summ, "security": owner, "parameters": params, "responses": {"200": {"description": summ, **({"content": js("Balance")} if sub == "balance" else {})}, **pick("400", "401", "404")}}}
paths["/v1/balance/{iccid}"] = {"get": {"operationId": "balanceLegacy", "summary": "the data balance (older path)", "deprecated": True, "security": owner, "parameters": [iccid], "responses": {"200": {"description": "the balance", "content": js("Balance")}, **pick("400", "401", "404")}}}
paths["/v1/usage"] = {"post": {"operationId": "ingestUsage", "summary": "carrier-signed usage receipts (at most 1 000): each accepted, duplicate or rejected with a reason", "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["receipts"], "properties": {"receipts": {"type": "array", "maxItems": 1000, "items": {"$ref": "#/components/schemas/UsageReceipt"}}}}}}}, "responses": {"200": {"description": "a result per receipt and totals"}, "413": err("body over 1 MiB"), **pick("400")}}}
paths["/v1/ledger/verify"] = {"get": {"operationId": "ledgerVerify", "summary": "the ledger's verdict: count, head, ok", "responses": {"200": {"description": "`{count, head, ok}` (or `ok: false` and the first problem)"}}}}
paths["/v1/ledger"] = {"get": {"operationId": "ledgerExport", "summary": "ledger entries as JSON lines (operator)", "security": [{"adminToken": []}], "parameters": [{"name": "from", "in": "query", "schema": {"type": "integer"}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}}, {"name": "shard", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 15}}], "responses": {"200": {"description": "application/x-ndjson"}, "403": err("admin endpoints disabled (no admin_token)"), **pick("400", "401")}}}
paths["/admin/refunds/run"] = {"post": {"operationId": "runRefunds", "summary": "pay owed refunds from the treasury key (operator, cron)", "security": [{"adminToken": []}], "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}], "responses": {"200": {"description": "what was paid"}, "403": err("admin endpoints disabled"), **pick("400", "401")}}}
paths["/admin/cleanup/run"] = {"post": {"operationId": "runCleanup", "summary": "withdraw pending orders whose payment can no longer settle, or paid (tx-hash) orders pending past paid_order_pending_secs with their payment owed back, and retry queued carrier cancels (operator, cron)", "security": [{"adminToken": []}], "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}], "responses": {"200": {"description": "what was done (withdrawn, tried, requeued, owed_back: refunds owed for paid orders withdrawn) and what is left (queued, parked, owed_left: refunds to owe on a later run, owed_operator: refunds an operator must record, named again daily)"}, "403": err("admin endpoints disabled"), **pick("400", "401")}}}
paths["/gsma/rsp2/es2plus/handleDownloadProgressInfo"] = {"post": {"operationId": "downloadProgress", "summary": "ES2+ HandleDownloadProgressInfo from the issuing carrier's SM-DP+", "security": [{"carrierCredential": []}], "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["iccid", "notificationPointId", "notificationPointStatus"]}}}}, "responses": {"204": {"description": "recorded"}, "403": err("the carrier did not issue this ICCID"), "404": err("no such SIM"), "413": err("body too large"), **pick("400", "401")}}}
doc = {
 "openapi": "3.1.0",
 "info": {"title": "esim402", "version": "0.1.0", "description": "Pay-per-use eSIM activation and metered data over x402 (USDC). Errors are `{\"error\": {\"code\", \"message\", \"field\"?}}`."},
 "paths": paths,
 "components": {
  "securitySchemes": {
   "simToken": {"type": "http", "scheme": "bearer", "description": "the SIM's access token (`sim_…`), returned with the paid activation"},
   "signInWithX": {"type": "apiKey", "in": "header", "name": "SIGN-IN-WITH-X", "description": "x402 sign-in-with-x proof (base64 JSON, EIP-4361 message signed with EIP-191 by the SIM's payer)"},
   "carrierCredential": {"type": "http", "scheme": "bearer", "description": "the carrier's callback credential"},
   "adminToken": {"type": "http", "scheme": "bearer", "description": "the operator's admin_token"}},
  "responses": {},
  "schemas": {
   "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
   "ActivationRequest": {"type": "object", "required": ["region", "data_mb"], "additionalProperties": False, "properties": {"region": {"type": "string"}, "data_mb": {"type": "integer", "minimum": 1}, "carrier": {"type": "string"}, "eid": {"type": "string", "pattern": "^[0-9]{32}$"}, "payer": {"type": "string"}, "chain": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, "allow_failover": {"type": "boolean"}, "invoice_id": {"type": "string"}}},
   "Invoice402": {"type": "object", "properties": {"invoice_id": {"type": "string"}, "amount_usdc": {"type": "string"}, "amount_atomic": {"type": "string"}, "x402Version": {"const": 1}, "accepts": {"type": "array"}, "top_up_options": {"type": "array", "items": {"type": "object", "properties": {"data_mb": {"type": "integer"}, "amount_usdc": {"type": "string"}}}}}},
   "Sim": {"type": "object", "properties": {"iccid": {"type": "string"}, "carrier": {"type": "string"}, "region": {"type": "string"}, "state": {"enum": ["pending", "active", "suspended", "terminated", "failed"]}, "profile_state": {"type": "string"}, "owner": {"type": ["string", "null"]}, "agent_id": {"type": ["string", "null"]}, "held_by_owner": {"type": "boolean", "description": "suspended by its owner (no quota until resumed)"}, "held_for_balance": {"type": "boolean", "description": "suspended because its balance ran out (a top-up resumes it)"}}},
   "PaidActivation": {"allOf": [{"$ref": "#/components/schemas/Sim"}, {"type": "object", "properties": {"activation_code": {"type": "string"}, "qr_code": {"type": "string"}, "access_token": {"type": "string"}, "transaction": {"type": "string"}, "payer": {"type": "string"}, "network": {"type": "string"}, "amount_usdc": {"type": "string"}}}]},
   "QuotaRequest": {"type": "object", "additionalProperties": False, "properties": {"quota_kb": {"type": "integer", "minimum": 1}, "top_up_mb": {"type": "integer"}, "payer": {"type": "string"}, "invoice_id": {"type": "string"}}},
   "Balance": {"type": "object", "properties": {"iccid": {"type": "string"}, "credited_bytes": {"type": "integer"}, "used_bytes": {"type": "integer"}, "remaining_bytes": {"type": "integer"}, "remaining_kb": {"type": "integer"}, "reserved_bytes": {"type": "integer", "description": "bytes quota grants hold that usage has not reported yet"}, "low": {"type": "boolean"}, "suspended_for_balance": {"type": "boolean"}, "closed": {"type": "boolean", "description": "terminated or switched away"}, "switched_to": {"type": ["string", "null"], "description": "the SIM a switch moved this one's data to (its remaining_bytes is 0 here)"}, "granted_kb": {"type": "integer"}, "granted_bytes": {"type": "integer"}, "valid_until": {"type": "integer", "description": "until when a grant may be used (unix seconds)"}}},
   "UsageReceipt": {"type": "object", "required": ["carrier", "iccid", "plmn", "session_id", "seq", "window_start", "window_end", "bytes_up", "bytes_down", "signature"], "properties": {"carrier": {"type": "string"}, "iccid": {"type": "string"}, "plmn": {"type": "string"}, "session_id": {"type": "string"}, "seq": {"type": "integer"}, "window_start": {"type": "integer"}, "window_end": {"type": "integer"}, "bytes_up": {"type": "integer"}, "bytes_down": {"type": "integer"}, "signature": {"type": "string", "description": "0x r‖s‖v over the receipt's EIP-712 digest, or over its page's (UsagePage(bytes32 root,uint32 count)) when `page` is present"}, "page": {"type": "object", "required": ["count", "proof"], "additionalProperties": False, "description": "page-signed receipt: the page size and this receipt's Merkle proof (sorted-pair keccak, leaf = EIP-712 struct hash)", "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 1048576}, "proof": {"type": "array", "maxItems": 20, "items": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"}}}}}}}}}
del doc["components"]["responses"]
import pathlib
with open(pathlib.Path(__file__).with_name("openapi.json"), "w") as f:
    json.dump(doc, f, indent=1)
