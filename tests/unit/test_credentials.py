"""credentials: one list of secrets, refused in params and hidden in every printed line."""

from __future__ import annotations

import pytest

from lora_pipeline.config import MlflowConfig
from lora_pipeline.credentials import has_credentials, redact
from lora_pipeline.errors import ConfigError


@pytest.mark.parametrize("uri", [
    "https://h/api?auth=abc123", "https://h/api?pwd=abc123", "https://h/?x=1&access_token=abc123",
    "https://h/?X-Amz-Signature=abc123", "https://u:abc123@h/", "https://abc123@h/",
])
def test_what_params_refuse_the_logs_redact(uri):
    assert has_credentials(uri)
    assert "abc123" not in redact(uri)
    assert "abc123" not in redact(f"failed to reach {uri} (refused)")


def test_a_token_as_the_user_name_of_the_tracking_uri_is_refused_in_params():
    with pytest.raises(ConfigError, match="mlflow.tracking_uri.*credentials") as caught:
        MlflowConfig(tracking_uri="https://ghp_tok3nVALUE@mlflow.example/")
    assert "tok3nVALUE" not in str(caught.value)


@pytest.mark.parametrize("text", ["lr=0.002 rank=8", "https://h/?page=2&sort=name", "sqlite:////tmp/p/mlflow.db",
                                  "monkey=3 keyboard=1"])
def test_names_without_a_secret_word_are_left_alone(text):
    assert redact(text) == text
    assert not has_credentials(text)
