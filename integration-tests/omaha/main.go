// lacave-omaha: the daemon's Omaha endpoint seen through Flatcar's own Go Omaha library
// (github.com/flatcar/go-omaha, from the Go module proxy), as an independent implementation
// of the protocol update_engine speaks.
//
//	lacave-omaha check -server URL -machine ID -version V -group G [-fetch DIR]
//	    an update check as update_engine sends it (app id, version, track, machine id, the
//	    "complete" event); prints the answer as JSON. With -fetch, downloads the payload the
//	    answer names and checks its size, SHA-1 and SHA-256 the way update_engine does
//	    (go-omaha's Package.Verify, and the postinstall action's sha256).
//	lacave-omaha event -server URL -machine ID -version V -group G -type N -result N [-error N] [-previous V]
//	    one event report (13/1 downloading, 14/1 downloaded, 800/1 installed, 3/2 rebooted …).
//	lacave-omaha bench -server URL -version V -group G -duration D -concurrency N
//	    update checks as fast as they are answered; prints answers per second.
//	lacave-omaha serve -listen ADDR -package FILE -version V
//	    go-omaha's own TrivialServer offering FILE as V: the peer of the benchmark.
package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flatcar/go-omaha/omaha"
	"github.com/flatcar/go-omaha/omaha/client"
)

const flatcarAppID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "lacave-omaha: "+format+"\n", args...)
	os.Exit(1)
}

type common struct {
	server, machine, version, group string
}

func flags(fs *flag.FlagSet) *common {
	c := &common{}
	fs.StringVar(&c.server, "server", "", "the Omaha endpoint")
	fs.StringVar(&c.machine, "machine", "0123456789abcdef0123456789abcdef", "machine id")
	fs.StringVar(&c.version, "version", "", "the Flatcar version the node runs")
	fs.StringVar(&c.group, "group", "stable", "update group (track)")
	return c
}

func (c *common) app() *client.AppClient {
	ac, err := client.NewAppClient(c.server, c.machine, flatcarAppID, c.version)
	if err != nil {
		die("%v", err)
	}
	if err := ac.SetTrack(c.group); err != nil {
		die("%v", err)
	}
	ac.SetClientVersion("update_engine-0.4.10")
	return ac
}

type checkResult struct {
	Status   string `json:"status"`
	Error    string `json:"error,omitempty"`
	Version  string `json:"version,omitempty"`
	URL      string `json:"url,omitempty"`
	Package  string `json:"package,omitempty"`
	Size     uint64 `json:"size,omitempty"`
	SHA1     string `json:"sha1,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Action   string `json:"action_sha256,omitempty"`
	Verified string `json:"verified,omitempty"`
}

func check(args []string) {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	c := flags(fs)
	fetch := fs.String("fetch", "", "download the payload into this directory and verify it")
	fs.Parse(args)
	out := checkResult{}
	resp, err := c.app().UpdateCheck()
	switch e := err.(type) {
	case nil:
		out.Status = string(resp.Status)
	case omaha.UpdateStatus:
		out.Status = string(e)
	case omaha.AppStatus:
		out.Status = "app:" + string(e)
	default:
		out.Status = "error"
		out.Error = err.Error()
	}
	if resp != nil && resp.Status == omaha.UpdateOK {
		if len(resp.Manifests) != 1 || len(resp.Manifests[0].Packages) != 1 || len(resp.URLs) == 0 {
			die("an update answer without one manifest, one package and a URL: %+v", resp)
		}
		m := resp.Manifests[0]
		p := m.Packages[0]
		out.Version = m.Version
		out.URL = resp.URLs[0].CodeBase
		out.Package, out.Size, out.SHA1, out.SHA256 = p.Name, p.Size, p.SHA1, p.SHA256
		for _, a := range m.Actions {
			if a.Event == "postinstall" {
				out.Action = a.SHA256
			}
		}
		if *fetch != "" {
			out.Verified = verify(out.URL, p, out.Action, *fetch)
		}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

// verify downloads the package as update_engine would and checks it: "ok" or what failed.
func verify(codebase string, p *omaha.Package, actionSHA256, dir string) string {
	r, err := http.Get(codebase + p.Name)
	if err != nil {
		return "download: " + err.Error()
	}
	defer r.Body.Close()
	if r.StatusCode != 200 {
		return fmt.Sprintf("download: HTTP %d", r.StatusCode)
	}
	f, err := os.Create(filepath.Join(dir, p.Name))
	if err != nil {
		return err.Error()
	}
	if _, err := io.Copy(f, r.Body); err != nil {
		return "download: " + err.Error()
	}
	f.Close()
	if err := p.Verify(dir); err != nil {
		return err.Error()
	}
	if actionSHA256 != p.SHA256 && p.SHA256 != "" {
		return "the postinstall action's sha256 is not the package's"
	}
	if actionSHA256 == "" {
		return "no postinstall action with a sha256"
	}
	return "ok"
}

func event(args []string) {
	fs := flag.NewFlagSet("event", flag.ExitOnError)
	c := flags(fs)
	typ := fs.Int("type", 3, "eventtype")
	result := fs.Int("result", 1, "eventresult")
	code := fs.Int("error", 0, "errorcode")
	previous := fs.String("previous", "", "previousversion")
	fs.Parse(args)
	ev := &omaha.EventRequest{
		Type:            omaha.EventType(*typ),
		Result:          omaha.EventResult(*result),
		PreviousVersion: *previous,
		ErrorCode:       *code,
	}
	if err := <-c.app().Event(ev); err != nil {
		die("%v", err)
	}
	fmt.Println("ok")
}

func bench(args []string) {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	c := flags(fs)
	duration := fs.Duration("duration", 10*time.Second, "how long")
	concurrency := fs.Int("concurrency", 16, "requests in flight")
	fs.Parse(args)
	// The request update_engine sends, encoded once by go-omaha.
	req := c.app().NewAppRequest()
	req.Apps[0].AddPing()
	req.Apps[0].AddUpdateCheck()
	req.Apps[0].Events = append(req.Apps[0].Events, client.EventComplete)
	body, err := xml.Marshal(req)
	if err != nil {
		die("%v", err)
	}
	body = append([]byte(xml.Header), body...)
	tr := &http.Transport{MaxIdleConnsPerHost: *concurrency}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var ok, failed int64
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				r, err := hc.Post(c.server, "text/xml", bytes.NewReader(body))
				if err != nil {
					atomic.AddInt64(&failed, 1)
					continue
				}
				var resp omaha.Response
				err = xml.NewDecoder(r.Body).Decode(&resp)
				r.Body.Close()
				if err != nil || r.StatusCode != 200 || len(resp.Apps) != 1 || resp.Apps[0].UpdateCheck == nil {
					atomic.AddInt64(&failed, 1)
					continue
				}
				atomic.AddInt64(&ok, 1)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	fmt.Printf("{\"answers\": %d, \"failed\": %d, \"seconds\": %.2f, \"per_second\": %.0f}\n", ok, failed, secs, float64(ok)/secs)
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	pkg := fs.String("package", "", "the payload")
	version := fs.String("version", "", "its version")
	fs.Parse(args)
	s, err := omaha.NewTrivialServer(*listen)
	if err != nil {
		die("%v", err)
	}
	if err := s.AddPackage(*pkg, filepath.Base(*pkg)); err != nil {
		die("%v", err)
	}
	s.SetVersion(*version)
	fmt.Printf("listening on %s\n", s.Addr())
	if err := s.Serve(); err != nil {
		die("%v", err)
	}
}

func main() {
	if len(os.Args) < 2 {
		die("usage: lacave-omaha check|event|bench|serve [flags]")
	}
	switch os.Args[1] {
	case "check":
		check(os.Args[2:])
	case "event":
		event(os.Args[2:])
	case "bench":
		bench(os.Args[2:])
	case "serve":
		serve(os.Args[2:])
	default:
		die("unknown command %q", os.Args[1])
	}
}
