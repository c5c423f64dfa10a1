// Verifies one received request with the official Standard Webhooks library and prints the
// payload it yields. Input on stdin: {"secret": "whsec_…", "headers": {…}, "body": "…"}.
// Exits non-zero when verification fails.
import { Webhook } from "standardwebhooks";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { secret, headers, body } = JSON.parse(input);
const payload = new Webhook(secret).verify(body, headers);
process.stdout.write(JSON.stringify(payload ?? null));
