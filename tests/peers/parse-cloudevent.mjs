// Parses one received HTTP request with the official CloudEvents SDK (binary or structured
// mode, per the HTTP protocol binding) and prints the event's attributes and data as JSON.
// Input on stdin: {"headers": {…}, "body": "…"}. Exits non-zero when it is not a valid event.
import { HTTP } from "cloudevents";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { headers, body } = JSON.parse(input);
const event = HTTP.toEvent({ headers, body });
event.validate();
process.stdout.write(JSON.stringify(event.toJSON()));
