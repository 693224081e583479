// Opens the GraphQL explorer in headless Chromium, runs its query, prints what it shows.
// Usage: node explorer.mjs <explorer url> <text the result must contain>
import { launch } from "./chromium.mjs";

const [url, expected] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage();
  const failed = [];
  page.on("requestfailed", (request) => failed.push(request.url()));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForSelector(".graphiql-execute-button", { timeout: 30000 });
  await page.click(".graphiql-execute-button");
  await page.waitForFunction(
    (text) => (document.querySelector(".graphiql-response")?.innerText || "").includes(text),
    expected,
    { timeout: 30000 },
  );
  const response = await page.evaluate(
    () => document.querySelector(".graphiql-response").innerText,
  );
  console.log(JSON.stringify({ title: await page.title(), response, failed }));
} finally {
  await browser.close();
}
