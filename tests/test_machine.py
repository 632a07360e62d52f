"""evotune.machine: the CPU facts every timing names (model, AVX-512, cores)."""

from evotune.machine import avx512_label, cpu_facts


def test_cpu_facts_read_the_model_and_avx512_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel Xeon X\nflags\t\t: fpu sse avx2 avx512f avx512bw\n\n"
                    "processor\t: 1\nmodel name\t: Intel Xeon X\nflags\t\t: fpu sse avx2 avx512f\n")
    facts = cpu_facts(info)
    assert facts["cpu"] == "Intel Xeon X" and facts["avx512"] is True and facts["cores"] >= 1
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2\n")
    assert cpu_facts(info)["avx512"] is False and cpu_facts(info)["cpu"] == "AMD EPYC"


def test_cpu_facts_without_cpuinfo_say_they_cannot_tell_avx512(tmp_path):
    facts = cpu_facts(tmp_path / "absent")
    assert facts["avx512"] is None and facts["cpu"]  # the platform's processor or machine name


def test_the_label_says_unknown_rather_than_no():
    assert [avx512_label(v) for v in (True, False, None)] == ["AVX-512", "no AVX-512", "AVX-512 unknown"]
