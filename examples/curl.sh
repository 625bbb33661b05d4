#!/usr/bin/env bash
# Rerank with curl. BASE_URL defaults to a local server; set API_KEY if the server wants one.
set -euo pipefail
BASE_URL=${BASE_URL:-http://localhost:8080}
auth=()
[ -n "${API_KEY:-}" ] && auth=(-H "Authorization: Bearer $API_KEY")
curl -sS --fail-with-body "$BASE_URL/v1/rerank" "${auth[@]}" \
  -H 'Content-Type: application/json' \
  -d '{
    "query": "Which planet is known as the Red Planet?",
    "documents": [
      "Venus is often called Earth'\''s twin because of its similar size and proximity.",
      "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
      "Jupiter, the largest planet in our solar system, has a prominent red spot."
    ],
    "top_n": 2,
    "return_documents": false
  }'
echo
