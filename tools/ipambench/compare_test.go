package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeRounds writes a rounds file with the given figures per round: rate for throughput,
// p50 for latency, each side's rounds in order.
func writeRounds(t *testing.T, dir string, rows map[string][]float64) {
	writeRun(t, dir, "etcd1", rows)
}

// writeRun is writeRounds for the run called name.
func writeRun(t *testing.T, dir, name string, rows map[string][]float64) {
	t.Helper()
	var b strings.Builder
	b.WriteString("round,seconds,phase,side,instances,concurrency,pool,addresses,util_pct,used,ops,rate_per_s,p50_us,p99_us,max_us,errors,duplicates\n")
	for point, xs := range rows {
		var phase, side string
		var inst, conc int
		if _, err := fmt.Sscanf(point, "%s %s %d %d", &phase, &side, &inst, &conc); err != nil {
			t.Fatal(err)
		}
		for i, x := range xs {
			rate, p50 := x, 1.0
			if phase == "latency" {
				rate, p50 = 1, x
			}
			fmt.Fprintf(&b, "%d,1.000,%s,%s,%d,%d,64k,65534,0,0,1,%g,%g,1,1,0,0\n", i+1, phase, side, inst, conc, rate, p50)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name+"-rounds.csv"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCompare(t *testing.T) {
	pub, now := t.TempDir(), t.TempDir()
	writeRounds(t, pub, map[string][]float64{
		"throughput baseline 0 1":    {100, 110, 90, 105, 95},
		"throughput ours 1 1":        {200, 190, 210, 205, 195}, // round ratios 1.73–2.33, median ratio 2
		"throughput baseline 0 8":    {100, 100, 100},
		"throughput ours 1 8":        {300, 310, 290},
		"latency baseline 0 1":       {800, 700, 900},
		"latency ours 1 1":           {1000, 1100, 1200},
		"fifty-first-use ours 50 64": {5}, // one round: no spread to land in
	})
	writeRounds(t, now, map[string][]float64{
		"throughput baseline 0 1":    {100, 100, 100, 100, 100},
		"throughput ours 1 1":        {250, 250, 250, 250, 250}, // outside, and so is its ratio 2.5
		"throughput baseline 0 8":    {120, 120, 120},           // outside; ours inside, its ratio 2.5 not
		"throughput ours 1 8":        {300, 300, 300},
		"latency baseline 0 1":       {750, 760, 770}, // the p50 is compared, not the rate
		"latency ours 1 1":           {1000, 1050, 1100},
		"fifty-first-use ours 50 64": {5},
	})
	// A run on one side only is named, not compared.
	writeRun(t, pub, "etcd3", map[string][]float64{"throughput ours 1 1": {1, 2, 3}})
	writeRun(t, now, "lone", map[string][]float64{"throughput ours 1 1": {1, 2, 3}})
	// Only PASS and MISS are verdicts; "report" is not. A published target the new run no
	// longer judges is named.
	for dir, targets := range map[string]string{
		pub: "target,ours,reference,ratio,limit,result\nthroughput,1,1,1,>= 1,PASS\nserial,1,1,1,<= 1,MISS\nmemory,1,-,-,report,report\nold,1,1,1,<= 1,PASS\n",
		now: "target,ours,reference,ratio,limit,result\nthroughput,1,1,1,>= 1,PASS\nserial,1,1,1,<= 1,PASS\nmemory,1,-,-,report,report\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, "etcd1-targets.csv"), []byte(targets), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	if err := compareDirs(pub, now, &out); err != nil {
		t.Fatal(err)
	}
	var lines []string // each with single spaces
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	if got, want := lines[slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "medians inside") })], "4 of 6 medians inside the published spread; 1 of 3 ratios to the baseline inside the published rounds' spread"; got != want {
		t.Errorf("summary %q, want %q\n%s", got, want, out.String())
	}
	for _, want := range []string{
		"etcd1 throughput 64k 0% baseline 0 1 per s 100 [90–110] 100 in",
		"etcd1 throughput 64k 0% ours 1 1 per s 200 [190–210] 250 OUT 2.00 [1.73–2.33] 2.50 OUT +25%",
		"etcd1 throughput 64k 0% baseline 0 8 per s 100 [100–100] 120 OUT",
		"etcd1 throughput 64k 0% ours 1 8 per s 300 [290–310] 300 in 3.00 [2.90–3.10] 2.50 OUT -17%",
		"etcd1 latency 64k 0% ours 1 1 p50 µs 1100 [1000–1200] 1050 in 1.38 [1.25–1.57] 1.38 in +0%",
		"largest change of a ratio outside its spread: +25% (etcd1 throughput ours/1 c=1)",
		`etcd1: target "serial": PASS, published MISS`,
		"etcd1: 1 of 2 verdicts against the targets as published",
		`etcd1: target "old": published PASS, not judged in this run`,
		"etcd3: published, not in this run",
		"lone: nothing published to compare with",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("no line %q in\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "fifty-first-use") {
		t.Errorf("a point of one round was compared:\n%s", out.String())
	}
}

func TestCompareNothingInCommon(t *testing.T) {
	pub, now := t.TempDir(), t.TempDir()
	writeRounds(t, pub, map[string][]float64{"throughput ours 1 1": {1, 2, 3}})
	writeRounds(t, now, map[string][]float64{"throughput ours 3 1": {1, 2, 3}})
	if err := compareDirs(pub, now, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "nothing to compare") {
		t.Errorf("err %v, want nothing to compare", err)
	}
}

// TestRatios: rounds pair by their number, not their place; a baseline of 0 gives no ratio.
func TestRatios(t *testing.T) {
	r, ok := ratios(map[int]float64{1: 200, 2: 300, 3: 400}, map[int]float64{2: 100, 3: 200, 4: 50})
	if want := (figure{med: 3, min: 2, max: 3}); !ok || r != want {
		t.Errorf("ratios %+v %v, want %+v (rounds 2 and 3 only; the medians' ratio 300/100)", r, ok, want)
	}
	if r, ok := ratios(map[int]float64{1: 1, 2: 1, 3: 1}, map[int]float64{1: 0, 2: 0, 3: 0}); ok {
		t.Errorf("a baseline of 0 gave ratio %+v", r)
	}
	if f := rangeOf(map[int]float64{1: 1, 2: 2, 3: 3, 4: 10}); f != (figure{med: 2.5, min: 1, max: 10}) {
		t.Errorf("rangeOf an even count: %+v", f)
	}
}
