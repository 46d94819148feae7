"""The `openai` package (OpenAI's Python SDK from PyPI) against a running limner.

Usage: python3 openai_client.py http://127.0.0.1:PORT
Run by tests/compat_clients.rs against `limner serve --model tiny-fixture --no-auth`.
Exits non-zero (an AssertionError or the SDK's own exception) on any mismatch.
"""

import base64
import io
import sys
import urllib.request

import openai
from PIL import Image

MODEL = "tiny-fixture"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main(base):
    # --no-auth accepts any key; with auth this is a limner token.
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="limner-token", max_retries=0)

    r = client.images.generate(model=MODEL, prompt="a gnome bard", n=2, size="64x96",
                               response_format="b64_json", quality="standard", user="u1")
    check(r.created > 0, r)
    check(len(r.data) == 2, r)
    for d in r.data:
        img = Image.open(io.BytesIO(base64.b64decode(d.b64_json)))
        check(img.size == (64, 96), img.size)
        check(img.info["parameters"].startswith("a gnome bard\n"), img.info)
        check(d.revised_prompt == "a gnome bard", d.revised_prompt)

    # A URL reply: a signed media URL on this server.
    r = client.images.generate(model="dall-e-3", prompt="a paladin", size="64x64",
                               response_format="url")
    url = r.data[0].url
    check(url.startswith(base + "/api/media/images/generations/"), url)
    with urllib.request.urlopen(url) as resp:
        check(resp.headers["content-type"] == "image/png", resp.headers)
        img = Image.open(io.BytesIO(resp.read()))
    check(img.size == (64, 64), img.size)

    # OpenAI's error shapes, as the SDK's exception classes see them.
    try:
        client.images.generate(model="no-such-model", prompt="x", size="64x64")
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found", e)
    try:
        client.images.generate(model=MODEL, prompt="x", size="100x100")
        raise AssertionError("a size that is not a multiple of 8 was accepted")
    except openai.BadRequestError as e:
        check(e.param == "size", e)

    models = [m.id for m in client.models.list()]
    check(MODEL in models, models)
    print("openai: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
