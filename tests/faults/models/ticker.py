"""A slow model for the fault tests: COUNT responses, one every DELAY_S.

Served twice: `ticker` (decoupled: a stream of COUNT responses) and `sleeper` (one response
after COUNT ticks), so that a test can hold a request in flight for a known time.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

DELAY_S = 0.2


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                self._stream(request)
            return None
        return [self._answer(request) for request in requests]

    def _stream(self, request):
        sender = request.get_response_sender()
        for tick in range(_count(request)):
            time.sleep(DELAY_S)
            sender.send(pb_utils.InferenceResponse([_tick(tick)]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _answer(self, request):
        count = _count(request)
        time.sleep(DELAY_S * count)
        return pb_utils.InferenceResponse([_tick(count)])


def _count(request):
    return int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy().reshape(-1)[0])


def _tick(value):
    return pb_utils.Tensor("TICK", np.array([value], dtype=np.int32))
