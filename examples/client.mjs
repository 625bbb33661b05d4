// Rerank from JavaScript with fetch (Node 18+): node examples/client.mjs [BASE_URL]
const BASE_URL = process.argv[2] ?? process.env.BASE_URL ?? "http://localhost:8080";
const headers = { "Content-Type": "application/json" };
if (process.env.API_KEY) headers.Authorization = `Bearer ${process.env.API_KEY}`;

const documents = [
  "Venus is often called Earth's twin because of its similar size and proximity.",
  "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
  "Jupiter, the largest planet in our solar system, has a prominent red spot.",
];

const response = await fetch(`${BASE_URL}/v1/rerank`, {
  method: "POST",
  headers,
  body: JSON.stringify({
    query: "Which planet is known as the Red Planet?",
    documents,
    top_n: 2,
    return_documents: false,
  }),
});
const body = await response.json();
if (!response.ok) {
  console.error(`${response.status}: ${body.detail}`);
  process.exit(1);
}
for (const { index, relevance_score } of body.results) {
  console.log(`${relevance_score.toFixed(4)}  ${documents[index]}`);
}
