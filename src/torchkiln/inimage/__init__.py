"""The code that runs inside the images: the smoke check, the benchmark, the arch audit, and the
GPU facts the host tasks share with them.

Every module here imports only the standard library, torch (torchvision and torchaudio lazily)
and other modules of this subpackage; tests/unit/test_inimage_imports.py enforces it. The
Dockerfiles copy this subpackage, with the two entry modules torchkiln.smoke and torchkiln.bench,
and nothing else of the host package.
"""
