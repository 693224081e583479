// Subscribes with the graphql-ws client and prints what arrives as JSON lines on stdout:
//   {"event":"connected"}                      once the server acknowledged connection_init
//   {"event":"next","id":<n>,"payload":{...}}  each result of subscription n
//   {"event":"error","id":<n>,"errors":[...]}  a subscription the server refused
//   {"event":"complete","id":<n>}              a subscription the server ended
//   {"event":"closed","code":<c>,"reason":"…"} the socket closed (the script then exits)
//
// node subscribe.mjs <ws url> <subscriptions JSON> [token]
//   subscriptions: [{"query": "...", "variables": {...}}, ...]
//   token: sent as {"authorization": "Bearer <token>"} in connection_init
// It listens until its stdin ends (the test that runs it decides how long) or the server
// closes the socket; it never reconnects (retryAttempts 0), so a close is seen as it happened.
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const [url, subscriptionsJson, token] = process.argv.slice(2);
if (!url || !subscriptionsJson) {
  console.error("usage: node subscribe.mjs <ws url> <subscriptions JSON> [token]");
  process.exit(2);
}
const subscriptions = JSON.parse(subscriptionsJson);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: false,
  retryAttempts: 0,
  connectionParams: token ? { authorization: `Bearer ${token}` } : {},
  on: {
    connected: () => print({ event: "connected" }),
    closed: (event) => {
      print({ event: "closed", code: event.code, reason: event.reason });
      process.exit(0);
    },
  },
});

subscriptions.forEach((request, id) => {
  client.subscribe(request, {
    next: (payload) => print({ event: "next", id, payload }),
    error: (errors) =>
      print({ event: "error", id, errors: Array.isArray(errors) ? errors : [String(errors)] }),
    complete: () => print({ event: "complete", id }),
  });
});

// The caller ends the run by closing stdin (or killing the process).
process.stdin.resume();
process.stdin.on("end", async () => {
  await client.dispose();
  process.exit(0);
});
