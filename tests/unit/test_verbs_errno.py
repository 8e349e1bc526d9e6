"""The verbs probe reports the errno of a failed ibv_get_device_list, with a stand-in verbs
library compiled here that fails the way the real one does (NULL, errno set)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from torchkiln.inimage import ncclnet

STUB = """
#include <errno.h>
#include <stddef.h>
void **ibv_get_device_list(int *count) { *count = 0; errno = ENOSYS; return NULL; }
const char *ibv_get_device_name(void *device) { return "none"; }
void ibv_free_device_list(void **list) {}
"""


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
def test_a_failing_device_list_names_its_errno(tmp_path):
    source = tmp_path / "verbs.c"
    source.write_text(STUB)
    library = tmp_path / "libibverbs-stub.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, timeout=60
    )
    verbs = ncclnet.ask_verbs(str(library))
    assert verbs.loaded and verbs.devices == []
    assert verbs.error == "ibv_get_device_list failed (errno 38)"
