"""Test-only hooks loaded by the tests' LiteLLM proxy (tests/gateways/litellm_harness.py).

- `refuser`: a second callback, after tollgate's: refuses requests whose `user` is "refuse-me" in
  its pre-call hook (as a guardrail would), after tollgate's check allowed them.
- `auth`: LiteLLM's `custom_auth`, standing in for its key database (which needs Prisma and a
  download): the master key passes as itself; a `vk_<tollgate key>` virtual key passes with
  `metadata.tollgate_api_key` set, as an operator sets it on a virtual key (`/key/generate
  {"metadata": {"tollgate_api_key": ...}}`); anything else is a 401.
"""
import os

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth

MASTER_KEY = os.environ["LITELLM_MASTER_KEY"]


class Refuser(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        if data.get("user") == "refuse-me":
            raise HTTPException(status_code=400, detail="refused by a guardrail")
        return data


refuser = Refuser()


async def auth(request, api_key: str) -> UserAPIKeyAuth:
    if api_key == MASTER_KEY:
        return UserAPIKeyAuth(api_key=api_key)
    if api_key.startswith("vk_"):
        return UserAPIKeyAuth(api_key=api_key, metadata={"tollgate_api_key": api_key[3:]})
    raise HTTPException(status_code=401, detail="unknown LiteLLM key")
