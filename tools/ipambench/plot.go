package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"slices"
	"strconv"
	"strings"
)

// A small hand-written SVG line chart: the two plots people look at need axes, labels, a legend
// and nothing else, and a plotting dependency would be larger than this file.

type xy struct{ x, y float64 }

type series struct {
	name  string
	color string
	dash  bool
	pts   []xy
}

type tick struct {
	v     float64
	label string
}

type chart struct {
	title, subtitle string
	xLabel, yLabel  string
	xLog            bool   // x positions on a log scale (concurrency, pool size)
	xTicks          []tick // the x axis shows exactly these
	series          []series
}

const (
	svgW, svgH                     = 820, 480
	padL, padR, padT, padB         = 80, 230, 70, 60
	plotW, plotH                   = svgW - padL - padR, svgH - padT - padB
	colorBaseline                  = "#555555"
	colorA, colorB, colorC, colorD = "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"
)

func (c chart) svg() []byte {
	var b bytes.Buffer
	esc := html.EscapeString
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="16" font-weight="bold">%s</text>`+"\n", padL, esc(c.title))
	fmt.Fprintf(&b, `<text x="%d" y="44" fill="#444">%s</text>`+"\n", padL, esc(c.subtitle))

	xmin, xmax := c.xTicks[0].v, c.xTicks[len(c.xTicks)-1].v
	fx := func(v float64) float64 {
		if c.xLog {
			v, xmin, xmax := math.Log(v), math.Log(xmin), math.Log(xmax)
			if xmax == xmin {
				return padL + plotW/2
			}
			return padL + (v-xmin)/(xmax-xmin)*plotW
		}
		if xmax == xmin {
			return padL + plotW/2
		}
		return padL + (v-xmin)/(xmax-xmin)*plotW
	}
	ymax := 0.0
	for _, s := range c.series {
		for _, p := range s.pts {
			ymax = max(ymax, p.y)
		}
	}
	step := niceStep(ymax * 1.1 / 5)
	top := math.Ceil(ymax*1.1/step) * step
	if top == 0 {
		top, step = 1, 0.2
	}
	fy := func(v float64) float64 { return padT + plotH - v/top*plotH }

	// Grid, ticks and axes.
	decimals := max(0, int(-math.Floor(math.Log10(step))))
	for i := 0; float64(i)*step <= top+step/2; i++ {
		v := float64(i) * step
		y := fy(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", padL, y, padL+plotW, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", padL-6, y, strconv.FormatFloat(v, 'f', decimals, 64))
	}
	for _, t := range c.xTicks {
		x := fx(t.v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>`+"\n", x, padT, x, padT+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, padT+plotH+18, esc(t.label))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", padL, padT+plotH, padL+plotW, padT+plotH)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", padL, padT, padL, padT+plotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", padL+plotW/2, svgH-16, esc(c.xLabel))
	fmt.Fprintf(&b, `<text transform="translate(20,%d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", padT+plotH/2, esc(c.yLabel))

	// Lines and legend.
	for i, s := range c.series {
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="6,4"`
		}
		pts := slices.Clone(s.pts)
		slices.SortFunc(pts, func(a, b xy) int { return cmpFloat(a.x, b.x) })
		var path []string
		for _, p := range pts {
			path = append(path, fmt.Sprintf("%.1f,%.1f", fx(p.x), fy(p.y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", s.color, dash, strings.Join(path, " "))
		for _, p := range pts {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", fx(p.x), fy(p.y), s.color)
		}
		ly := padT + 10 + i*22
		lx := padL + plotW + 20
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", lx, ly, lx+28, ly, s.color, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d" dominant-baseline="middle">%s</text>`+"\n", lx+36, ly, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// niceStep rounds a raw step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func throughputChart(res *results, instances int) chart {
	c := chart{
		title:    "Throughput vs concurrency",
		subtitle: fmt.Sprintf("%s; RequestAddress + ReleaseAddress cycles; baseline: bare etcd claim + release transactions; medians", res.Name),
		xLabel:   "concurrent requests",
		yLabel:   "cycles per second",
		xLog:     true,
	}
	colors := map[int]string{1: colorA, instances: colorB}
	lines := map[string]*series{}
	var names []string
	for _, p := range res.Throughput {
		name, color, dash := "ours, "+instancesName(p.Instances), colors[p.Instances], false
		if p.Side == "baseline" {
			name, color, dash = "baseline (raw etcd)", colorBaseline, true
		}
		if lines[name] == nil {
			lines[name] = &series{name: name, color: color, dash: dash}
			names = append(names, name)
		}
		lines[name].pts = append(lines[name].pts, xy{float64(p.Concurrency), p.Rate})
		if !slices.ContainsFunc(c.xTicks, func(t tick) bool { return t.v == float64(p.Concurrency) }) {
			c.xTicks = append(c.xTicks, tick{float64(p.Concurrency), strconv.Itoa(p.Concurrency)})
		}
	}
	slices.SortFunc(c.xTicks, func(a, b tick) int { return cmpFloat(a.v, b.v) })
	for _, n := range names {
		c.series = append(c.series, *lines[n])
	}
	return c
}

func instancesName(n int) string {
	if n == 1 {
		return "1 instance"
	}
	return fmt.Sprintf("%d instances", n)
}

func latencyChart(res *results) chart {
	c := chart{
		title:    "Serial allocation latency (p50) vs pool size and utilisation",
		subtitle: fmt.Sprintf("%s; RequestAddress through one daemon; dashed: the baseline's claim transaction", res.Name),
		xLabel:   "pool size (addresses, log scale)",
		yLabel:   "p50 latency (ms)",
		xLog:     true,
	}
	palette := []string{colorA, colorD, colorB, colorC}
	colors := map[int]string{}
	lines := map[string]*series{}
	var names []string
	for _, p := range res.Latency {
		if _, ok := colors[p.Util]; !ok {
			colors[p.Util] = palette[len(colors)%len(palette)]
		}
		name := fmt.Sprintf("ours, %d%% used", p.Util)
		if p.Side == "baseline" {
			name = fmt.Sprintf("baseline, %d%% used", p.Util)
		}
		if lines[name] == nil {
			lines[name] = &series{name: name, color: colors[p.Util], dash: p.Side == "baseline"}
			names = append(names, name)
		}
		lines[name].pts = append(lines[name].pts, xy{float64(p.Addrs), float64(p.P50.Microseconds()) / 1000})
		if !slices.ContainsFunc(c.xTicks, func(t tick) bool { return t.v == float64(p.Addrs) }) {
			c.xTicks = append(c.xTicks, tick{float64(p.Addrs), fmt.Sprintf("%s (%d)", p.Pool, p.Addrs)})
		}
	}
	slices.SortFunc(c.xTicks, func(a, b tick) int { return cmpFloat(a.v, b.v) })
	for _, n := range names {
		c.series = append(c.series, *lines[n])
	}
	return c
}
