"""Tests of benchmarks/report's rendering, on fabricated results (nothing runs).

    python3 -m unittest benchmarks/test_report.py
"""
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "report"


def load_report():
    loader = importlib.machinery.SourceFileLoader("swiftlet_report", str(SCRIPT))
    spec = importlib.util.spec_from_loader("swiftlet_report", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    loader.exec_module(module)
    return module


report = load_report()

HOST = {"date": "2026-01-02T03:04:05+00:00", "cpu": "Test CPU", "cpu_mhz": "1000", "nproc": 2,
        "kernel": "6.0-test", "kvm_module": "kvm_intel", "memory": "1 kB", "qemu": "QEMU emulator version 9.9",
        "python": "3.11", "repo_commit": "abc1234", "loadavg_start": ["0.10", "0.20", "0.30"],
        "loadavg_end": ["0.40", "0.50", "0.60"], "host_is_vm": False}


def run(bench, vmm, rnd, wall_s=None, **values):
    return {"bench": bench, "vmm": vmm, "round": rnd, "argv": [vmm], "ok": True, "error": "",
            "wall_s": wall_s, "rc": 0, "stdout": "", "stderr": "", "values": values}


def fabricated() -> dict:
    runs = []
    # P1: Swiftlet 40, 42, 44 ms; QEMU 100 ms each -> 0.42x, goal <= 0.5x met.
    for rnd, ms in enumerate((40, 44, 42)):
        runs += [run("P1", "swiftlet", rnd, ms / 1000), run("P1", "qemu", rnd, 0.1), run("P1", "floor", rnd, 0.03)]
    # P2: Swiftlet 5.0 MiB -> goal <= 4.5 MiB not met.
    for rnd in range(3):
        runs += [run("P2", "swiftlet", rnd, rss_excl_guest_mib=5.0, devices_rss_excl_guest_mib=4.0 + rnd / 10),
                 run("P2", "qemu", rnd, rss_excl_guest_mib=30.0)]
    # P3: 20000 exits in 1.0 s (Swiftlet) and 0.8 s (QEMU): 20,000 vs 25,000 exits/s -> 0.8x, not met.
    for rnd in range(3):
        runs += [run("P3", "swiftlet", rnd, 0.05, iterations=0), run("P3", "swiftlet", rnd, 1.05, iterations=20000),
                 run("P3", "qemu", rnd, 0.05, iterations=0), run("P3", "qemu", rnd, 0.85, iterations=20000)]
    machine = {**{k: v for k, v in HOST.items() if k != "kvm_module"}, "kvm_modules": "kvm_intel"}
    bench = {"machine": machine, "args": {"exit_base": 0, "exit_iterations": 20000, "runs": 3}, "runs": runs}
    virtio = {"machine": machine, "commands": {}, "notes": {}, "results": {
        "Swiftlet": {"randread4k_iops": [400000.0, 500000.0], "seqread1m_mb_s": [6000.0, 6000.0],
                     "seqwrite1m_mb_s": [4000.0, 4000.0], "tx_mbit_s": [3000.0, 3400.0], "rx_mbit_s": [2600.0]},
        "QEMU microvm": {"randread4k_iops": [100000.0, 150000.0], "seqread1m_mb_s": [5000.0, 5000.0],
                         "seqwrite1m_mb_s": [3000.0, 3000.0], "tx_mbit_s": [3700.0, 3800.0], "rx_mbit_s": [2600.0]},
        "Swiftlet qcow2 overlay": {"randread4k_iops": [600000.0], "randwrite4k_iops": [300000.0]},
        "QEMU microvm qcow2 overlay": {"randread4k_iops": [200000.0], "randwrite4k_iops": [400000.0]},
        "host fio": {"randread4k_iops": [600000.0, 600000.0], "seqread1m_mb_s": [6000.0], "seqwrite1m_mb_s": [3800.0]},
    }}
    l1 = {"bench": "L1", "guest": "g", "args": {"runs": 2, "cpus": 1, "memory": "256M"},
          "commands": {"Swiftlet": "swiftlet-vmm", "QEMU microvm": "qemu"}, "failures": [],
          "runs": {"Swiftlet": [{"marker_s": 15.0, "poweroff_s": 16.0}, {"marker_s": 15.2, "poweroff_s": 16.0}],
                   "QEMU microvm": [{"marker_s": 13.0, "poweroff_s": 14.0}, {"marker_s": 14.0, "poweroff_s": 15.0}]}}
    vsock = {"runs": {"V1": [{"tx": 2000.0, "rx": 1500.0, "rtt_us": 100.0, "rtt_min_us": 40.0},
                             {"tx": 2400.0, "rx": 1500.0, "rtt_us": 110.0, "rtt_min_us": 40.0}]}}
    return {"bench": bench, "virtio": virtio, "l1": l1, "vsock": vsock}


class RenderTests(unittest.TestCase):
    def setUp(self):
        self.saved = fabricated()
        self.data = report.samples(self.saved)
        self.rows = {r["id"]: r for r in report.summarize(self.data)}

    def test_samples(self):
        self.assertEqual(self.data["P1"]["swiftlet"], [40.0, 44.0, 42.0])
        self.assertEqual([round(x) for x in self.data["P3"]["qemu"]], [25000] * 3)
        self.assertEqual(self.data["P4-randread"]["floor"], [600000.0, 600000.0])
        self.assertNotIn("floor", self.data["P5-tx"])
        self.assertEqual(self.data["L1"]["qemu"], [13.0, 14.0])

    def test_rows_ratio_and_goals(self):
        p1, p2, p3 = self.rows["P1"], self.rows["P2"], self.rows["P3"]
        self.assertAlmostEqual(p1["ratio"], 0.42)
        self.assertTrue(p1["met"])                      # 0.42x <= 0.5x
        self.assertEqual(p2["median"]["swiftlet"], 5.0)
        self.assertFalse(p2["met"])                     # 5.0 MiB > 4.5 MiB
        self.assertEqual(p2["goal_text"], "≤ 4.5 MiB")
        devices = self.rows["P2-devices"]             # Swiftlet only: 4.0, 4.1, 4.2 MiB
        self.assertEqual(devices["median"], {"swiftlet": 4.1})
        self.assertTrue(devices["met"])
        self.assertNotIn("qemu", self.data["P2-devices"])
        self.assertAlmostEqual(p3["ratio"], 0.8)
        self.assertFalse(p3["met"])                     # 0.8x < 1.0x, higher is better
        self.assertTrue(self.rows["P4-randread"]["met"])  # 450k / 125k IOPS
        self.assertFalse(self.rows["P5-tx"]["met"])       # 3200 / 3750 Mbit/s
        self.assertTrue(self.rows["P5-rx"]["met"])        # equal: >= 1.0x
        self.assertAlmostEqual(self.rows["L1"]["ratio"], 15.1 / 13.5)
        self.assertFalse(self.rows["L1"]["met"])
        self.assertTrue(self.rows["Q4-randread"]["met"])    # 3.0x
        self.assertFalse(self.rows["Q4-randwrite"]["met"])  # 0.75x
        self.assertNotIn("floor", self.rows["Q4-randread"]["median"])
        v1 = self.rows["V1-tx"]                          # Swiftlet only, no goal
        self.assertEqual(v1["median"], {"swiftlet": 2200.0})
        self.assertIsNone(v1["ratio"])
        self.assertIsNone(v1["met"])
        self.assertEqual(v1["goal_text"], "—")

    def test_summary_table(self):
        table = report.summary_table(list(self.rows.values()), HOST, "docs/benchmarks")
        lines = table.splitlines()
        self.assertIn("commit abc1234", lines[0])
        self.assertIn("kvm_intel", lines[0])
        self.assertIn("0.10 0.20 0.30 at the start", lines[0])
        self.assertIn("Medians of 1-3 runs", lines[0])
        self.assertIn("| | Swiftlet | QEMU | floor | Swiftlet / QEMU | goal | met? |", lines)
        p1 = next(line for line in lines if line.startswith("| P1:"))
        self.assertIn("[plot](docs/benchmarks/P1.png)", p1)
        self.assertIn("| 42.0 ms | 100.0 ms | 30.0 ms | 0.42× | ≤ 0.5× QEMU | yes |", p1)
        p2 = next(line for line in lines if line.startswith("| P2:"))
        self.assertIn("| 5.00 MiB | 30.00 MiB | — | 0.17× | ≤ 4.5 MiB | **no** |", p2)
        p3 = next(line for line in lines if line.startswith("| P3:"))
        self.assertIn("20,000 exits/s | 25,000 exits/s", p3)
        self.assertIn("≥ 1.0× QEMU | **no** |", p3)
        self.assertEqual(sum(1 for line in lines if line.startswith("| P4:")), 3)
        v1 = next(line for line in lines if line.startswith("| V1: virtio-vsock 1-byte"))
        self.assertIn("| 105.0 µs | — | — | — | — | — |", v1)

    def test_replace_block(self):
        doc = "a\n<!-- report:summary:begin -->\nold\n<!-- report:summary:end -->\nb\n"
        self.assertEqual(report.replace_block(doc, "summary", "new"),
                         "a\n<!-- report:summary:begin -->\nnew\n<!-- report:summary:end -->\nb\n")
        self.assertIsNone(report.replace_block("no markers", "summary", "new"))


class FromJsonTests(unittest.TestCase):
    """The script end to end on saved results: plots and --write."""

    def test_from_json_plots_and_write(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            results, plots = tmp / "results", tmp / "plots"
            results.mkdir()
            saved = fabricated()
            (results / "bench.json").write_text(json.dumps(saved["bench"]))
            (results / "virtio-bench.json").write_text(json.dumps(saved["virtio"]))
            (results / "report.json").write_text(json.dumps({"host": HOST, "commands": ["python3 x"]}))
            readme, md = tmp / "README.md", tmp / "BENCHMARKS.md"
            readme.write_text("# R\n\n<!-- report:summary:begin -->\nold table\n<!-- report:summary:end -->\n\nend\n")
            md.write_text("# B\n\n<!-- report:machine:begin -->\nx\n<!-- report:machine:end -->\n\n"
                          "<!-- report:plots:begin -->\ny\n<!-- report:plots:end -->\n")
            # --only P1,P4: the saved P1-P3 JSON has no commands/notes (fabricated), so
            # bench.py's own sections are re-rendered too; P2, P3, P5 are left out.
            proc = subprocess.run([sys.executable, str(SCRIPT), "--from-json", str(results), "--plots", str(plots),
                                   "--only", "P1,P4", "--write", "--readme", str(readme),
                                   "--benchmarks-md", str(md)], capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            for name in ("P1.png", "P4.png"):
                png = plots / name
                self.assertTrue(png.is_file(), name)
                self.assertGreater(png.stat().st_size, 1000)
                self.assertEqual(png.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
            self.assertFalse((plots / "P2.png").exists())
            text = readme.read_text()
            self.assertNotIn("old table", text)
            self.assertIn("| P1: kit `hello` boot to power-off", text)
            self.assertNotIn("| P2:", text)
            self.assertTrue(text.endswith("<!-- report:summary:end -->\n\nend\n"))
            doc = md.read_text()
            self.assertIn("- KVM module: kvm_intel", doc)
            self.assertIn("- Load average: 0.10 0.20 0.30 at the start, 0.40 0.50 0.60 at the end", doc)
            self.assertIn("P4.png", doc)
            self.assertIn("## P1 — boot to power-off wall time", doc)     # bench.py --from-json --write
            self.assertIn("## P4 — ", doc)                                  # virtio-bench.py --from-json --write
            summary = json.loads((results / "report.json").read_text())
            self.assertEqual(summary["host"]["repo_commit"], "abc1234")
            self.assertEqual({r["id"] for r in summary["summary"]},
                             {"P1", "P4-randread", "P4-seqread", "P4-seqwrite"})


if __name__ == "__main__":
    unittest.main()
