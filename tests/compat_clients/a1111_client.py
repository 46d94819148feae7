"""The `webuiapi` package (an AUTOMATIC1111 API client from PyPI) against a running limner.

Usage: python3 a1111_client.py http://127.0.0.1:PORT
Run by tests/compat_clients.rs against `limner serve --model tiny-fixture --no-auth`.
Exits non-zero (an AssertionError or the client's own exception) on any mismatch.
"""

import sys
import threading
import time

import requests
import webuiapi

MODEL = "tiny-fixture"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main(base):
    api = webuiapi.WebUIApi(baseurl=f"{base}/sdapi/v1", sampler="Euler a", steps=4)

    # Lists and models.
    samplers = api.util_get_sampler_names()
    check("Euler a" in samplers and "DPM++ 2M" in samplers, f"samplers: {samplers}")
    schedulers = api.util_get_scheduler_names()
    check("karras" in schedulers, f"schedulers: {schedulers}")
    # Titles are A1111's "name [short hash]" once the file is hashed (in the background, at start).
    deadline = time.time() + 30
    while not all(m["hash"] for m in api.get_sd_models()) and time.time() < deadline:
        time.sleep(0.1)
    models = api.util_get_model_names()
    titles = [t for t in models if t.startswith(MODEL + " [") and t.endswith("]")]
    check(len(titles) == 1 and len(titles[0]) == len(MODEL) + 13, f"models: {models}")
    api.util_set_model(MODEL)
    check(api.util_get_current_model() == titles[0], "current model")
    check(api.get_latent_upscale_modes()[0]["name"] == "Latent", "latent modes")

    # txt2img, as the regeneration guide's system called it (smaller).
    r = api.txt2img(prompt="a dwarf cleric", negative_prompt="blurry", seed=42, steps=4,
                    cfg_scale=8, width=64, height=96, sampler_name="Euler a")
    check(r.image.size == (64, 96), f"size {r.image.size}")
    text = r.image.info.get("parameters", "")
    check("Steps: 4, Sampler: Euler a, CFG scale: 8, Seed: 42, Size: 64x96" in text, text)
    check(text.startswith("a dwarf cleric\nNegative prompt: blurry\n"), text)
    check(r.info["seed"] == 42 and r.info["steps"] == 4, r.info)
    check(r.info["sampler_name"] == "Euler a" and r.info["cfg_scale"] == 8, r.info)
    check(r.info["sd_model_name"] == MODEL, r.info)
    check(r.info["infotexts"] == [text], r.info)
    check(r.parameters["prompt"] == "a dwarf cleric", r.parameters)
    first = r.image

    # A batch: consecutive seeds.
    r = api.txt2img(prompt="an elf", seed=7, steps=2, width=64, height=64, batch_size=2)
    check(len(r.images) == 2, len(r.images))
    check(r.info["all_seeds"] == [7, 8], r.info["all_seeds"])

    # Hires fix with the Latent upscaler.
    r = api.txt2img(prompt="a knight", seed=1, steps=4, width=64, height=64, enable_hr=True,
                    hr_scale=2, hr_upscaler=webuiapi.HiResUpscaler.Latent,
                    denoising_strength=0.5)
    check(r.image.size == (128, 128), f"hires size {r.image.size}")
    text = r.image.info.get("parameters", "")
    check("Size: 64x64" in text and "Hires upscale: 2" in text, text)
    check("Denoising strength: 0.5" in text, text)

    # img2img from the first image.
    r = api.img2img(images=[first], prompt="a dwarf cleric, smiling", seed=3, steps=4,
                    denoising_strength=0.5, width=64, height=96)
    check(r.image.size == (64, 96), f"img2img size {r.image.size}")
    check("Denoising strength: 0.5" in r.image.info.get("parameters", ""), r.image.info)
    check(r.info["denoising_strength"] == 0.5, r.info)

    # png-info reads our parameters back.
    info = api.png_info(first)
    check("Seed: 42" in info.info, info.info)
    check(info.parameters["Seed"] == "42" and info.parameters["Size-1"] == "64",
          info.parameters)

    # Progress, read from a second thread while a long generation runs, then interrupt it.
    result = {}

    def generate():
        result["r"] = api.txt2img(prompt="a long one", seed=5, steps=150, width=64,
                                  height=64, n_iter=2)

    worker = threading.Thread(target=generate)
    worker.start()
    seen = None
    while worker.is_alive():
        p = api.get_progress()
        if p["state"]["sampling_step"] > 0:
            seen = p
            break
        time.sleep(0.02)
    check(seen is not None, "never saw the generation in progress")
    check(0 < seen["progress"] <= 1, seen)
    check(seen["state"]["job_count"] == 2 and seen["state"]["sampling_steps"] == 150, seen)
    api.interrupt()
    worker.join()
    check(result["r"].info["limner_interrupted"] is True, result["r"].info)
    api.util_wait_for_ready(check_interval=0.1)
    check(api.get_progress()["state"]["job_count"] == 0, "idle after the job")

    # A bad request is a 422 with FastAPI's detail list.
    resp = requests.post(f"{base}/sdapi/v1/txt2img", json={"steps": 0})
    check(resp.status_code == 422, resp.status_code)
    check(resp.json()["detail"][0]["loc"] == ["body", "steps"], resp.text)
    try:
        api.img2img(images=[], prompt="x")
        raise AssertionError("img2img without images succeeded")
    except RuntimeError as e:
        check(e.args[0] == 422, e.args)

    print("webuiapi: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
