#!/usr/bin/env bash
# NVIDIA NIM's ranking call (what LangChain's and LlamaIndex's NVIDIARerank send), with curl.
# Answers raw logits, highest first. BASE_URL defaults to a local server; set API_KEY if needed.
# NIM clients also send "model": it must then be the served name (see /v1/models).
set -euo pipefail
BASE_URL=${BASE_URL:-http://localhost:8080}
auth=()
[ -n "${API_KEY:-}" ] && auth=(-H "Authorization: Bearer $API_KEY")
curl -sS --fail-with-body "$BASE_URL/v1/ranking" "${auth[@]}" \
  -H 'Content-Type: application/json' \
  -d '{
    "query": {"text": "What is the GPU memory bandwidth of H100 SXM?"},
    "passages": [
      {"text": "A100 provides up to 20X higher performance over the prior generation."},
      {"text": "Accelerated servers with H100 deliver 3 TB/s of memory bandwidth per GPU."}
    ],
    "truncate": "END"
  }'
echo
