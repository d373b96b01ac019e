from setuptools import find_packages, setup

setup(
    name="topkd_det",
    version="0.1.0",
    description="TopKD (Top-scaled Knowledge Distillation) for Detectron2 object detection, "
    "plus the paper's CIFAR-100 / ImageNet classification experiments",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["topkd_det", "topkd_det.*"]),
    # Ranges that GPU clusters can satisfy; requirements/lock.txt pins the tested versions.
    # Detectron2 has no PyPI release: an official build from source, or tools/install_detectron2.py.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "detectron2>=0.6",
        "pycocotools>=2.0.2",
        "fvcore>=0.1.5,<0.2",
        "iopath>=0.1.7,<0.1.10",
        "opencv-python-headless>=4.5",
        "yacs>=0.1.8",
        "tqdm>=4.40",
        "tensorboard>=2.10",
        "matplotlib>=3.5",
        "tabulate",
        "termcolor",
        "timm>=1.0",
        "scikit-learn>=1.3",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout"]},
)
