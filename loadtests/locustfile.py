"""`locust -f loadtests/locustfile.py --host HOST:PORT --triton-model minilm TritonHttpUser`

The users, their options and the scenarios live in the package (tritonize.loadtest), where
`tritonize loadtest` uses them too.
"""

from tritonize.loadtest.locustfile import *  # noqa: F403
