package main

import (
	"cmp"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// A published figure must reproduce on a fresh clone (issue 19): -compare sets every point of
// a run beside the same point of a published run, from the two runs' rounds files. A point
// reproduces when its median lands inside the published rounds' min–max; a ratio to the
// baseline, when it lands inside the min–max of the published round-by-round ratios (each
// round of ours against the baseline's round of the same number).

// pointKey names one point of a run, on one side.
type pointKey struct {
	name, phase, side            string
	instances, concurrency, util int
	pool                         string
}

// comparison is one point of ours (or the baseline), published and new.
type comparison struct {
	key                pointKey
	unit               string // what the figures are: cycles/s or p50 µs
	pub, now           figure
	pubRatio, nowRatio figure // ours against the baseline; zero for the baseline itself
}

// figure is a median and the min–max it came from.
type figure struct{ med, min, max float64 }

func (s figure) holds(x float64) bool { return x >= s.min && x <= s.max }

// roundValues are a rounds file's figures by point and round number.
type roundValues map[pointKey]map[int]float64

// metric is the figure a phase is judged by, as docs/PERFORMANCE.md gives it: the rate for
// load, the p50 for serial latency, the time a fifty-host burst took.
func metric(phase string) (column, unit string) {
	switch phase {
	case "latency", "floor", "exhausted":
		return "p50_us", "p50 µs"
	case "fifty-alloc", "fifty-release", "fifty-first-use":
		return "seconds", "s"
	}
	return "rate_per_s", "per s"
}

// readCSV is the rows of the CSV file at path.
func readCSV(path string) ([][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return rows, nil
}

func readRounds(path, name string) (roundValues, error) {
	rows, err := readCSV(path)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s: empty", path)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, h := range []string{"round", "seconds", "phase", "side", "instances", "concurrency", "pool", "util_pct", "rate_per_s", "p50_us"} {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("%s: no column %q: not a rounds file", path, h)
		}
	}
	v := roundValues{}
	for n, r := range rows[1:] {
		num := func(h string) (float64, error) {
			x, err := strconv.ParseFloat(r[col[h]], 64)
			if err != nil {
				return 0, fmt.Errorf("%s line %d, %s: %w", path, n+2, h, err)
			}
			return x, nil
		}
		var n4 [4]int // round, instances, concurrency, util_pct
		for i, h := range []string{"round", "instances", "concurrency", "util_pct"} {
			x, err := num(h)
			if err != nil {
				return nil, err
			}
			n4[i] = int(x)
		}
		k := pointKey{name: name, phase: r[col["phase"]], side: r[col["side"]], instances: n4[1], concurrency: n4[2],
			util: n4[3], pool: r[col["pool"]]}
		column, _ := metric(k.phase)
		x, err := num(column)
		if err != nil {
			return nil, err
		}
		if v[k] == nil {
			v[k] = map[int]float64{}
		}
		v[k][n4[0]] = x
	}
	return v, nil
}

func rangeOf(byRound map[int]float64) figure {
	xs := slices.Collect(maps.Values(byRound))
	return figure{med: median(xs), min: slices.Min(xs), max: slices.Max(xs)}
}

// ratios: ours against the baseline, as the ratio of the medians (the published figure) and
// the min–max of each round's against the baseline's round of the same number; not ok when no
// round pairs or a baseline figure is 0 (a round of errors only).
func ratios(ours, base map[int]float64) (figure, bool) {
	byRound := map[int]float64{}
	for round, o := range ours {
		if b, ok := base[round]; ok && b > 0 {
			byRound[round] = o / b
		}
	}
	bm := rangeOf(base).med
	if len(byRound) == 0 || bm <= 0 {
		return figure{}, false
	}
	r := rangeOf(byRound)
	r.med = rangeOf(ours).med / bm
	return r, true
}

// compareRounds pairs every point both runs measured in at least 3 rounds (fewer make no
// spread), in a stable order.
func compareRounds(pub, now roundValues) []comparison {
	var out []comparison
	for k, p := range pub {
		n, ok := now[k]
		if !ok || len(p) < 3 || len(n) < 3 {
			continue
		}
		_, unit := metric(k.phase)
		c := comparison{key: k, unit: unit, pub: rangeOf(p), now: rangeOf(n)}
		base := k
		base.side, base.instances = "baseline", 0
		if pb, nb := pub[base], now[base]; k.side != "baseline" && len(pb) >= 3 && len(nb) >= 3 {
			pr, pok := ratios(p, pb)
			nr, nok := ratios(n, nb)
			if pok && nok {
				c.pubRatio, c.nowRatio = pr, nr
			}
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b comparison) int {
		x, y := a.key, b.key
		return cmp.Or(strings.Compare(x.name, y.name), strings.Compare(x.phase, y.phase), strings.Compare(x.pool, y.pool),
			cmp.Compare(x.util, y.util), cmp.Compare(x.instances, y.instances), strings.Compare(x.side, y.side),
			cmp.Compare(x.concurrency, y.concurrency))
	})
	return out
}

// compareDirs compares every NAME-rounds.csv of newDir with the one of pubDir, and prints the
// points and how many reproduced.
func compareDirs(pubDir, newDir string, w io.Writer) error {
	runs := func(dir string) map[string]bool {
		files, _ := filepath.Glob(filepath.Join(dir, "*-rounds.csv")) // only a malformed pattern errs
		names := map[string]bool{}
		for _, f := range files {
			names[strings.TrimSuffix(filepath.Base(f), "-rounds.csv")] = true
		}
		return names
	}
	published, measured := runs(pubDir), runs(newDir)
	for _, name := range slices.Sorted(maps.Keys(measured)) {
		if !published[name] {
			fmt.Fprintf(w, "%s: nothing published to compare with\n", name)
		}
	}
	var all []comparison
	var names []string
	for _, name := range slices.Sorted(maps.Keys(published)) {
		if !measured[name] {
			fmt.Fprintf(w, "%s: published, not in this run\n", name)
			continue
		}
		pub, err := readRounds(filepath.Join(pubDir, name+"-rounds.csv"), name)
		if err != nil {
			return err
		}
		now, err := readRounds(filepath.Join(newDir, name+"-rounds.csv"), name)
		if err != nil {
			return err
		}
		all = append(all, compareRounds(pub, now)...)
		names = append(names, name)
	}
	if len(all) == 0 {
		return fmt.Errorf("no point of %s/*-rounds.csv is in %s: nothing to compare", newDir, pubDir)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "RUN\tPHASE\tPOOL\tUTIL\tSIDE\tINSTANCES\tCONCURRENCY\tUNIT\tPUBLISHED [MIN-MAX]\tNOW\t\tRATIO PUBLISHED [ROUNDS MIN-MAX]\tNOW\t\tCHANGE\n")
	var in, ratiosIn, withRatio int
	var worst float64 // the largest change of a ratio that landed outside
	var worstAt string
	for _, c := range all {
		k := c.key
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d%%\t%s\t%d\t%d\t%s\t%s\t%.4g\t%s", k.name, k.phase, k.pool, k.util, k.side, k.instances,
			k.concurrency, c.unit, fmtFigure(c.pub, "%.4g"), c.now.med, mark(c.pub.holds(c.now.med), &in))
		if c.pubRatio.max > 0 {
			withRatio++
			change, inside := c.nowRatio.med/c.pubRatio.med-1, c.pubRatio.holds(c.nowRatio.med)
			fmt.Fprintf(tw, "\t%s\t%.2f\t%s\t%+.0f%%", fmtFigure(c.pubRatio, "%.2f"), c.nowRatio.med, mark(inside, &ratiosIn), 100*change)
			// Largest as a factor either way: halving counts as much as doubling.
			if !inside && math.Abs(math.Log1p(change)) > math.Abs(math.Log1p(worst)) {
				worst, worstAt = change, fmt.Sprintf("%s %s %s/%d c=%d", k.name, k.phase, k.side, k.instances, k.concurrency)
			}
		} else {
			fmt.Fprint(tw, "\t\t\t")
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d of %d medians inside the published spread; %d of %d ratios to the baseline inside the published rounds' spread\n",
		in, len(all), ratiosIn, withRatio)
	if worstAt != "" {
		fmt.Fprintf(w, "largest change of a ratio outside its spread: %+.0f%% (%s)\n", 100*worst, worstAt)
	}
	for _, name := range names {
		if err := compareTargets(filepath.Join(pubDir, name+"-targets.csv"), filepath.Join(newDir, name+"-targets.csv"), name, w); err != nil {
			return err
		}
	}
	return nil
}

// compareTargets says which of a run's verdicts against its targets (PASS or MISS) differ from
// the published run's.
func compareTargets(pubFile, newFile, name string, w io.Writer) error {
	verdicts := func(path string) (map[string]string, []string, error) {
		rows, err := readCSV(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, err
		}
		v, order := map[string]string{}, []string{}
		for _, r := range rows[min(1, len(rows)):] {
			if len(r) == 6 && (r[5] == "PASS" || r[5] == "MISS") {
				v[r[0]] = r[5]
				order = append(order, r[0])
			}
		}
		return v, order, nil
	}
	pub, order, err := verdicts(pubFile)
	if err != nil {
		return err
	}
	now, _, err := verdicts(newFile)
	if err != nil {
		return err
	}
	var same, both int
	for _, t := range order {
		p := pub[t]
		if _, ok := now[t]; !ok {
			fmt.Fprintf(w, "%s: target %q: published %s, not judged in this run\n", name, t, p)
			continue
		}
		both++
		if p == now[t] {
			same++
			continue
		}
		fmt.Fprintf(w, "%s: target %q: %s, published %s\n", name, t, now[t], p)
	}
	if both > 0 {
		fmt.Fprintf(w, "%s: %d of %d verdicts against the targets as published\n", name, same, both)
	}
	return nil
}

func fmtFigure(s figure, f string) string {
	return fmt.Sprintf(f+" ["+f+"–"+f+"]", s.med, s.min, s.max)
}

func mark(inside bool, count *int) string {
	if inside {
		*count++
		return "in"
	}
	return "OUT"
}
