"""The C++ part of rtclake: the JSON Lines parser (``src/rtclake/_jsoncols.cpp``).

Everything else is declared in ``pyproject.toml``. It builds against simdjson, which
Debian ships as ``libsimdjson-dev`` (``make`` installs it when it is missing).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rtclake._jsoncols",
            sources=["src/rtclake/_jsoncols.cpp"],
            libraries=["simdjson"],
            language="c++",
            extra_compile_args=["-std=c++17", "-O3", "-Wall"],
        )
    ]
)
