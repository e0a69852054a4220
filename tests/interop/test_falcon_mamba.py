from interop.common import check_family, make_hf


def test_falcon_mamba(tmp_path):
    hf = make_hf("FalconMambaConfig", "FalconMambaForCausalLM", hidden_size=32, num_hidden_layers=3,
                 vocab_size=120, state_size=8, mixer_rms_eps=1e-5)
    check_family(tmp_path, hf, 120)
