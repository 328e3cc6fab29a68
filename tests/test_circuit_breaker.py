from pipeline.circuit_breaker import BreakerConfig, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(breaker: CircuitBreaker, failures: list[bool]) -> None:
    for failed in failures:
        assert breaker.try_acquire()
        breaker.record(failed=failed)


def test_it_stays_closed_below_the_minimum_number_of_calls():
    breaker = CircuitBreaker(BreakerConfig())
    run(breaker, [True] * 19)
    assert breaker.state == "closed"
    run(breaker, [True])
    assert breaker.state == "open"


def test_it_opens_at_40_percent_failures_over_the_window():
    breaker = CircuitBreaker(BreakerConfig())
    run(breaker, [False] * 30 + [True] * 19)  # 19/49 = 39 %
    assert breaker.state == "closed"
    run(breaker, [True])  # 20/50 = 40 %
    assert breaker.state == "open"
    assert not breaker.try_acquire()


def test_the_oldest_outcome_slides_out_of_the_window():
    breaker = CircuitBreaker(BreakerConfig())
    run(breaker, [False] * 31 + [True] * 19)  # 19/50 = 38 %
    assert breaker.state == "closed"
    run(breaker, [True])  # the oldest success slid out: 20/50, where 20/51 would not open it
    assert breaker.state == "open"


def test_open_then_half_open_probes_close_it():
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(), clock=clock)
    run(breaker, [True] * 20)
    assert breaker.state == "open" and 4.9 < breaker.retry_after_s() <= 5.0
    clock.now = 4.9
    assert not breaker.try_acquire()
    clock.now = 5.0
    assert breaker.state == "half_open"
    assert [breaker.try_acquire() for _ in range(4)] == [True, True, True, False]  # only the probes
    for _ in range(3):
        breaker.record(failed=False)
    assert breaker.state == "closed" and breaker.try_acquire()


def test_a_failed_probe_opens_it_again():
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(), clock=clock)
    run(breaker, [True] * 20)
    clock.now = 5.0
    assert breaker.try_acquire()
    breaker.record(failed=True)
    assert breaker.state == "open"
    clock.now = 9.9
    assert breaker.state == "open"
    clock.now = 10.0
    assert breaker.state == "half_open"


def test_an_abandoned_probe_frees_its_place():
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(probes=1), clock=clock)
    run(breaker, [True] * 20)
    clock.now = 5.0
    assert breaker.try_acquire() and not breaker.try_acquire()
    breaker.abandon()
    assert breaker.try_acquire()
