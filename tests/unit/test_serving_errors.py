"""The served model answers bad input with a 400 that says what to fix, and no stack trace."""

from __future__ import annotations

import types

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

from lora_pipeline.mlflow_model import TextClassifierModel


@pytest.mark.parametrize("frame, needle", [(pd.DataFrame({"text": ["fine", ""]}), "empty text in row 2"),
                                           (pd.DataFrame({"body": ["fine"]}), "no column 'text'"),
                                           (pd.DataFrame({"text": ["fine", 3]}), "holds int values")])
def test_bad_input_is_a_400_with_the_reason_and_no_stack_trace(frame, needle):
    model = TextClassifierModel()
    model._classifier = types.SimpleNamespace(card=types.SimpleNamespace(text_pair=False), labels=["a", "b"])
    with pytest.raises(MlflowException) as caught:
        model.predict(None, frame)
    err = caught.value
    assert err.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and err.get_http_status_code() == 400
    assert needle in err.message and "Traceback" not in err.serialize_as_json()
    assert len(err.serialize_as_json()) < 400
