// The JavaScript client under Node, the way the README says to use it there: downloaded
// once from the gateway, imported from a file, given absolute URLs.
//
//   node tests/node/client.mjs BASE_URL REQUEST_JSON
import { writeFile, readFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [base, requestFile] = process.argv.slice(2);
const source = await fetch(`${base}/v1/client.js`);
if (!source.ok) throw new Error(`client.js: ${source.status}`);
const file = join(await mkdtemp(join(tmpdir(), "bg-client-")), "batchgate-client.mjs");
await writeFile(file, await source.text());
const { fetchAndWait, BatchgateError } = await import(pathToFileURL(file).href);

const body = await readFile(requestFile, "utf8");
const seen = [];
const result = await fetchAndWait(
  `${base}/v1/tools/analyzer/jobs`,
  { method: "POST", headers: { "Content-Type": "application/json" }, body },
  (status) => seen.push(status.status),
);
if (!Array.isArray(result.insights) || result.insights.length === 0) {
  throw new Error(`unexpected result: ${JSON.stringify(result)}`);
}
if (!seen.includes("succeeded")) throw new Error(`statuses seen: ${seen}`);

// A refused request is a BatchgateError with the problem's code.
try {
  await fetchAndWait(`${base}/v1/tools/analyzer/jobs`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ inputs: { records: "x,y\n1,2\n" } }),
  });
  throw new Error("a bad request was accepted");
} catch (error) {
  if (!(error instanceof BatchgateError) || error.code !== "validation-failed") throw error;
}
console.log(`ok: ${result.insights.length} insights; statuses ${[...new Set(seen)].join(" ")}`);
