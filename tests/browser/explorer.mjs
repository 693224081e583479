// Opens the GraphQL explorer in headless Chromium, runs its query, prints what it shows.
// Usage: node explorer.mjs <explorer url> <text the result must contain>
import { chromium } from "playwright-core";

const [url, expected] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
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
