"""ms_attention: installs the package and compiles its CPU kernel library for this machine."""
import importlib.util
import os
import shutil

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_kernel_builder():
    path = os.path.join(ROOT, "ms_attention", "kernels", "cpu", "build.py")
    spec = importlib.util.spec_from_file_location("ms_attention_kernel_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithKernels(build_py):
    """Copies ops_yaml/ into the package and compiles the C++ kernels next to their loader."""

    def run(self):
        super().run()
        package_dir = os.path.join(self.build_lib, "ms_attention")
        yaml_target = os.path.join(package_dir, "_ops_yaml")
        shutil.rmtree(yaml_target, ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "ops_yaml"), yaml_target)
        kernel_dir = os.path.join(package_dir, "kernels", "cpu")
        info = _load_kernel_builder().build(kernel_dir)
        # `python -m ms_attention ...` run from the checkout imports the source tree, so give it the same build
        source_kernel_dir = os.path.join(ROOT, "ms_attention", "kernels", "cpu")
        if info and os.access(source_kernel_dir, os.W_OK) and os.path.realpath(source_kernel_dir) != \
                os.path.realpath(kernel_dir):
            for name in ["build_info.json"] + [v["file"] for k, v in info.items() if isinstance(v, dict)]:
                shutil.copy2(os.path.join(kernel_dir, name), os.path.join(source_kernel_dir, name))


class BinaryDistribution(Distribution):
    """The wheel holds a compiled library, so it must not be tagged pure-Python."""

    def has_ext_modules(self):
        return True


setup(
    name="ms_attention",
    version="0.1.0",
    description="MindSpore's flash-attention operators (incre/prompt/fused/flash/sparse) on CPU and Ascend",
    packages=find_packages(include=["ms_attention", "ms_attention.*"]),
    package_data={"ms_attention.kernels.cpu": ["csrc/*.cpp", "csrc/*.h", "csrc/attention/*.h"]},
    python_requires=">=3.9,<3.12",
    install_requires=["mindspore==2.10.0", "numpy<2", "pyyaml>=5.4"],
    extras_require={"test": ["pytest>=7"], "bench": ["matplotlib", "torch"]},
    cmdclass={"build_py": BuildPyWithKernels},
    distclass=BinaryDistribution,
    entry_points={"console_scripts": ["ms-attention=ms_attention.__main__:main"]},
)
