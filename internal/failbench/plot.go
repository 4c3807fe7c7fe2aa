package failbench

import (
	"errors"
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	colorRFSIS      = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colorRFSISNew   = color.RGBA{R: 0x7f, G: 0xb8, B: 0xe0, A: 0xff}
	colorKeepalived = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	colorFault      = color.Gray{Y: 0x60}
)

// stallSeries is one box per fault on the stall picture.
type stallSeries struct {
	label string
	color color.Color
	value func(Trial) *float64
	sys   string
}

// PlotStalls draws the distribution of the client-visible outage per
// system and fault as a PNG: for RFSIS, the stall of the connections that
// lived through the fault and the time until a new connection worked; for
// keepalived, whose connections all break, the time until a new one
// worked. Each trial is a dot over its series' box.
func (r *Report) PlotStalls(path string) error {
	series := []stallSeries{
		{"RFSIS: stall of the existing connections", colorRFSIS, func(t Trial) *float64 { return t.StallMS }, SystemRFSIS},
		{"RFSIS: first new connection", colorRFSISNew, func(t Trial) *float64 { return t.NewConnMS }, SystemRFSIS},
		{"keepalived: first new connection (existing ones are reset)", colorKeepalived, func(t Trial) *float64 { return t.NewConnMS }, SystemKeepalived},
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Client-visible outage per fault (%d trials each)", r.TrialsPerFault)
	p.Y.Label.Text = "ms after the fault"
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	const spread = 0.27
	for j, s := range series {
		var added bool
		for i, f := range r.Faults {
			var vs plotter.Values
			for _, t := range r.Trials {
				if t.System == s.sys && t.Fault == f {
					if v := s.value(t); v != nil {
						vs = append(vs, *v)
					}
				}
			}
			if len(vs) == 0 {
				continue
			}
			x := float64(i) + float64(j-1)*spread
			box, err := plotter.NewBoxPlot(vg.Points(22), x, vs)
			if err != nil {
				return fmt.Errorf("stall plot: %w", err)
			}
			box.BoxStyle.Color = s.color
			box.MedianStyle.Color = s.color
			box.WhiskerStyle.Color = s.color
			box.CapWidth = vg.Points(10)
			box.GlyphStyle.Radius = 0 // the dots below show every trial
			pts := make(plotter.XYs, len(vs))
			for k, v := range vs {
				pts[k] = plotter.XY{X: x, Y: v}
			}
			dots, err := plotter.NewScatter(pts)
			if err != nil {
				return fmt.Errorf("stall plot: %w", err)
			}
			dots.GlyphStyle.Color = s.color
			dots.GlyphStyle.Shape = draw.CircleGlyph{}
			dots.GlyphStyle.Radius = vg.Points(2.2)
			p.Add(box, dots)
			if !added {
				p.Legend.Add(s.label, dots)
				added = true
			}
		}
	}
	labels := make([]string, len(r.Faults))
	for i, f := range r.Faults {
		labels[i] = r.FaultLabel(f)
	}
	p.NominalX(labels...)
	p.X.Min, p.X.Max = -0.6, float64(len(r.Faults))-0.4
	p.Y.Max *= 1.3 // room for the legend above the highest dot
	p.Add(plotter.NewGrid())
	if err := p.Save(9*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("stall plot: %w", err)
	}
	return nil
}

// PlotTimelines draws, one panel per fault, the bytes echoed to all
// clients since the start of the window around one failover of each
// system, with the fault and each system's takeover marked: a pause is a
// flat stretch, and a system that lost its connections stays flat.
func (r *Report) PlotTimelines(path string) error {
	var rows [][]*plot.Plot
	var ymax float64
	for _, f := range r.Faults {
		p := plot.New()
		p.Title.Text = "One failover: " + r.FaultLabel(f)
		p.X.Label.Text = "ms after the fault"
		p.Y.Label.Text = "MB echoed since the window's start"
		p.Legend.Top = true
		p.Legend.Left = true
		p.Y.Min = 0
		var found bool
		for _, tl := range r.Timelines {
			if tl.Fault != f {
				continue
			}
			found = true
			c := colorRFSIS
			if tl.System == SystemKeepalived {
				c = colorKeepalived
			}
			pts := make(plotter.XYs, len(tl.Bytes))
			var sum int64
			for i, b := range tl.Bytes {
				sum += b
				pts[i] = plotter.XY{X: tl.StartMS + float64(i+1)*tl.BinMS, Y: float64(sum) / 1e6}
			}
			ymax = max(ymax, float64(sum)/1e6)
			line, err := plotter.NewLine(pts)
			if err != nil {
				return fmt.Errorf("timeline plot: %w", err)
			}
			line.LineStyle.Color = c
			line.LineStyle.Width = vg.Points(1.5)
			p.Add(line)
			p.Legend.Add(SystemLabel(tl.System), line)
			if tl.TakeoverMS != nil {
				mark, err := vertical(*tl.TakeoverMS, c, []vg.Length{vg.Points(2), vg.Points(2)})
				if err != nil {
					return err
				}
				p.Add(mark)
			}
		}
		if !found {
			continue
		}
		fault, err := vertical(0, colorFault, []vg.Length{vg.Points(5), vg.Points(3)})
		if err != nil {
			return err
		}
		p.Add(fault)
		p.Legend.Add("fault (dashed); takeover logged (dotted)", fault)
		p.Add(plotter.NewGrid())
		rows = append(rows, []*plot.Plot{p})
	}
	if len(rows) == 0 {
		return errors.New("timeline plot: no timelines in the report")
	}
	// Every panel gets the same y range (set last: the markers reach far
	// up and would stretch the axis), so the systems compare across
	// faults too.
	for _, row := range rows {
		row[0].Y.Max = max(ymax, 0.001) * 1.35 // room for the legend
	}
	const w, rowH = 9 * vg.Inch, 3 * vg.Inch
	img := vgimg.New(w, rowH*vg.Length(len(rows)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(rows), Cols: 1, PadTop: vg.Points(4), PadBottom: vg.Points(4), PadY: vg.Points(10), PadLeft: vg.Points(4), PadRight: vg.Points(8)}
	canvases := plot.Align(rows, tiles, dc)
	for i, row := range rows {
		row[0].Draw(canvases[i][0])
	}
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("timeline plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(out); err != nil {
		out.Close()
		return fmt.Errorf("timeline plot: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("timeline plot: %w", err)
	}
	return nil
}

// vertical is a vertical marker line at x reaching far above any data;
// the plot clips it to the y range set for the panel.
func vertical(x float64, c color.Color, dashes []vg.Length) (*plotter.Line, error) {
	l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: 1e9}})
	if err != nil {
		return nil, fmt.Errorf("marker: %w", err)
	}
	l.LineStyle.Color = c
	l.LineStyle.Dashes = dashes
	l.LineStyle.Width = vg.Points(1)
	return l, nil
}
