"""twistd plugin: ``twistd powerlb --listen tcp:8080 --backend http://127.0.0.1:9001``.

Kept to a ``ServiceMaker`` so listing plugins imports neither powerlb nor a reactor.
"""

from twisted.application.service import ServiceMaker

powerlb = ServiceMaker(
    "powerlb",
    "powerlb.tap",
    "HTTP load balancer and caching reverse proxy",
    "powerlb",
)
