"""The product page's snippets (regional-endpoints.md) as text, and the world they run against: ``api.x.ai``
with us-east-1 and eu-west-1, the gateway in Dublin (so the global endpoint lands in eu-west-1)."""

from __future__ import annotations

SNIPPET = """import os

from xai_sdk import Client
from xai_sdk.chat import user

client = Client(
api_key=os.getenv("XAI_API_KEY"),
api_host="us-east-1.api.x.ai" # Without the https://
)

chat = client.chat.create(model="grok-4")
chat.append(user("What is the meaning of life?"))

completion = chat.sample()
"""

OPENAI_PY = """from openai import OpenAI

client = OpenAI(
api_key=XAI_API_KEY,
base_url="https://us-east-1.api.x.ai/v1",
)

completion = client.chat.completions.create(
model="grok-4",
messages=[
{"role": "user", "content": "What is the meaning of life?"}
]
)
"""
OPENAI_JS = """import OpenAI from "openai";

const client = new OpenAI({
apiKey: XAI_API_KEY,
baseURL: "https://us-east-1.api.x.ai/v1",
});

const completion = await client.chat.completions.create({
model: "grok-4",
messages: [
{ role: "user", content: "What is the meaning of life?" }
]
});
"""
CURL = """curl https://us-east-1.api.x.ai/v1/chat/completions \\
-H "Content-Type: application/json" \\
-H "Authorization: Bearer $XAI_API_KEY" \\
-d '{
"messages": [
{
"role": "user",
"content": "What is the meaning of life, the universe, and everything?"
}
],
"model": "grok-4",
"stream": false
}'
"""

X_AI_WORLD = """
[gateway]
lat = 53.35
lon = -6.26
base_domains = ["api.x.ai"]

[[regions]]
id = "us-east-1"
lat = 39.04
lon = -77.49
zone = "us"

[[regions]]
id = "eu-west-1"
lat = 53.35
lon = -6.26
zone = "eu"

[[deployments]]
region = "us-east-1"
models = ["grok-4"]
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }]

[[deployments]]
region = "eu-west-1"
models = ["grok-4"]
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }]

[[teams]]
name = "demo"
keys = [{ id = "demo", env = "REGIONGATE_DEMO_API_KEY" }]
"""

# The TLS snippet test's world (us-east-1 and eu-west-1 under api.x.ai; the gateway in Dublin) plus a slow
# model in us-east-1 for streams that must still be running while the test acts.
ONE_PORT_WORLD = X_AI_WORLD + """
[[deployments]]
region = "us-east-1"
models = ["grok-3-mini"]
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 25 }]
"""
