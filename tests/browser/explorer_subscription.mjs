// Runs a subscription in the GraphQL explorer in headless Chromium, as a user would: the token
// goes into GraphiQL's headers editor, the subscription into the query editor, then the play
// button. Prints JSON lines on stdout while the page runs:
//   {"event":"sent","frame":{...}}        each graphql-ws message the page sends
//   {"event":"running"}                   the subscribe message went out
//   {"event":"response","text":"..."}     the result pane, each time it changes
//   {"event":"violation","directive":..,"blocked":..}  a Content-Security-Policy violation
// When stdin ends it tries one WebSocket the page's policy must refuse (another path of the
// same host), prints {"event":"probe","blocked":<bool>} and exits.
// Usage: node explorer_subscription.mjs <explorer url> <subscription> <headers JSON> <probe ws url>
import { launch } from "./chromium.mjs";

const [url, subscription, headers, probeUrl] = process.argv.slice(2);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const browser = await launch();
try {
  const page = await browser.newPage();
  await page.exposeFunction("reportViolation", (directive, blocked) =>
    print({ event: "violation", directive, blocked }),
  );
  await page.addInitScript(() =>
    document.addEventListener("securitypolicyviolation", (e) =>
      window.reportViolation(e.effectiveDirective, e.blockedURI),
    ),
  );
  page.on("websocket", (socket) =>
    socket.on("framesent", ({ payload }) => {
      const frame = JSON.parse(payload);
      print({ event: "sent", frame });
      if (frame.type === "subscribe") print({ event: "running" });
    }),
  );
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector(".graphiql-query-editor .CodeMirror", { timeout: 30000 });
  await page.getByRole("button", { name: "Headers" }).click();
  await page.evaluate(
    ([query, headers]) => {
      document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror.setValue(query);
      document
        .querySelector(".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror")
        .CodeMirror.setValue(headers);
    },
    [subscription, headers],
  );
  // What a user's typing pause gives GraphiQL: time to parse the query (a 100 ms debounce).
  await page.waitForFunction(
    () =>
      document.querySelector(".graphiql-query-editor .CodeMirror").CodeMirror.documentAST
        ?.definitions[0]?.operation === "subscription",
  );
  await page.click(".graphiql-execute-button");

  let shown = null;
  const watch = setInterval(async () => {
    const text = await page
      .evaluate(() => document.querySelector(".graphiql-response")?.innerText || "")
      .catch(() => null);
    if (text !== null && text !== shown) {
      shown = text;
      print({ event: "response", text });
    }
  }, 100);

  // The caller ends the run by closing stdin.
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
  clearInterval(watch);
  const blocked = await page.evaluate(
    (target) =>
      new Promise((resolve) => {
        document.addEventListener("securitypolicyviolation", () => resolve(true), { once: true });
        try {
          const socket = new WebSocket(target);
          socket.onopen = () => resolve(false);
          socket.onerror = () => setTimeout(() => resolve(false), 1000);
        } catch (error) {
          resolve(error.name === "SecurityError");
        }
      }),
    probeUrl,
  );
  print({ event: "probe", blocked });
} finally {
  await browser.close();
}
