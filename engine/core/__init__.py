"""The shared vocabulary every package depends on: domain types, the error
hierarchy, units and durations, the plugin registry and the clock.

Import arrows point one way::

    engine.core  <-  policies, forecasters, actuators, engine.sources  <-  engine (the orchestrator)

``engine.core`` imports nothing else of forescale (``tests/test_layering.py``
checks every arrow), so a policy, a forecaster or an actuator can use the
vocabulary without pulling in the cycle, the store or the CLI.
"""
