"""ChEES's trajectory-length update with divergent particles (proposals.adapt).

blackjax centres the start positions on the mean of all of them; the update must see the true
start of a divergent particle, not a zeroed one (which biased the gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bnn_bench.inference.smc.proposals import Proposal, _chees_base, adapt, init_tuning


def test_divergent_particles_keep_their_start_positions_in_the_chees_update():
    proposal = Proposal(num_steps=3, step_size=0.1, name="chees", target_accept=0.65)
    tuning = init_tuning(proposal)
    keys = jax.random.split(jax.random.key(0), 1)
    num, dim = 16, 4
    start = 20.0 + jax.random.normal(keys[0], (num, dim))  # far from 0: zeroing would show
    # Every trajectory spreads the cloud a little and moves outwards: the criterion's gradient is
    # positive (Adam's first step only sees its sign); zeroed starts look farther apart, flip it.
    centre = jnp.mean(start, axis=0)
    end = centre + 1.1 * (start - centre)
    momenta = end - centre
    finite = jnp.arange(num) >= 2  # two divergent particles...
    end = jnp.where(finite[:, None], end, jnp.nan)  # ...with non-finite end points
    accept = jnp.where(finite, 0.7, 0.0)
    kwargs = dict(num_steps=3, accept=accept, finite=finite, initial_positions=start)
    new = adapt(
        proposal, tuning, positions=end, momenta=momenta, inverse_mass=jnp.ones(dim), **kwargs
    )

    # blackjax's update on the true starts (finite stand-ins where the end points are NaN)
    _, update = _chees_base(proposal)
    ref = update(
        tuning.chees,
        jnp.where(finite[:, None], end, start),
        jnp.where(finite[:, None], momenta, 0.0),
        start,
        jnp.maximum(accept, 1e-20),
        ~finite,
        jnp.ones(dim),
    )
    got = float(new.chees.log_trajectory_length_moving_average)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, float(ref.log_trajectory_length_moving_average), rtol=1e-6)
    # and with the divergent starts zeroed (the old behaviour) the update differs
    zeroed = update(
        tuning.chees,
        jnp.where(finite[:, None], end, 0.0),
        jnp.where(finite[:, None], momenta, 0.0),
        jnp.where(finite[:, None], start, 0.0),
        jnp.maximum(accept, 1e-20),
        ~finite,
        jnp.ones(dim),
    )
    assert abs(float(zeroed.log_trajectory_length_moving_average) - got) > 1e-3
