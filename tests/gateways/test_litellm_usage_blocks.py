"""How the LiteLLM callback reads usage blocks the proxy tests' mocks cannot produce (cache writes,
Anthropic's shape): gateway_plugins/litellm/usage_blocks.py, standard library only."""
import pytest

from gateway_plugins.litellm.usage_blocks import usage_measurements


USAGE_SHAPES = [  # (usage block, what is reported)
    ({"prompt_tokens": 42, "completion_tokens": 17, "prompt_tokens_details": {"cached_tokens": 10}},
     {"input_tokens": 32, "output_tokens": 17, "cache_read_tokens": 10}),
    # chat/completions of an Anthropic model through LiteLLM: prompt_tokens counts reads and writes
    ({"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 10},
      "cache_read_input_tokens": 10, "cache_creation_input_tokens": 20},
     {"input_tokens": 20, "output_tokens": 5, "cache_read_tokens": 10, "cache_write_tokens": 20}),
    # the Responses API: input_tokens counts the cached ones
    ({"input_tokens": 42, "output_tokens": 17, "input_tokens_details": {"cached_tokens": 10}},
     {"input_tokens": 32, "output_tokens": 17, "cache_read_tokens": 10}),
    # Anthropic's messages: input_tokens does not
    ({"input_tokens": 12, "output_tokens": 7, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5},
     {"input_tokens": 12, "output_tokens": 7, "cache_read_tokens": 30, "cache_write_tokens": 5}),
    (None, None),
]



@pytest.mark.parametrize("usage,reported", USAGE_SHAPES)
def test_cached_tokens_are_counted_once(usage, reported):
    assert usage_measurements(usage) == reported


def test_an_object_reads_like_a_dict():
    class Details:
        cached_tokens = 4

    class Usage:
        prompt_tokens, completion_tokens, prompt_tokens_details = 9, 3, Details()

    assert usage_measurements(Usage()) == {"input_tokens": 5, "output_tokens": 3, "cache_read_tokens": 4}
