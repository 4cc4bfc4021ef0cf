"""A second LiteLLM callback for the tests, after tollgate's: refuses requests whose `user` is
"refuse-me" in its pre-call hook (as a guardrail would), after tollgate's check allowed them."""
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger


class Refuser(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        if data.get("user") == "refuse-me":
            raise HTTPException(status_code=400, detail="refused by a guardrail")
        return data


refuser = Refuser()
