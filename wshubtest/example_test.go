package wshubtest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/wshub/wshub"
	"github.com/wshub/wshub/wshubtest"
)

// An application's test: a message sent from one node reaches the user's
// client on another.
func ExampleNewCluster() {
	t := newExampleT() // in a test, the test's *testing.T
	defer t.cleanup()

	c := wshubtest.NewCluster(t, 2, nil)
	alice := c.Dial(t, 1, "alice")
	if err := c.Hub(0).Send(context.Background(), "alice", wshub.Text("hi")); err != nil {
		t.Fatal(err)
	}
	fmt.Println(alice.NextText())
	// Output: hi
}

// exampleT stands in for the *testing.T a test gets, since an example has
// none: it runs the cleanups when the example ends, and panics on a
// failure. Embedding testing.TB makes it one; the methods NewCluster and
// Client call are below.
type exampleT struct {
	testing.TB
	cleanups []func()
}

func newExampleT() *exampleT { return &exampleT{} }

func (t *exampleT) Helper()                   {}
func (t *exampleT) Cleanup(f func())          { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Logf(string, ...any)       {}
func (t *exampleT) Errorf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (t *exampleT) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (t *exampleT) Fatal(a ...any)            { panic(fmt.Sprint(a...)) }

func (t *exampleT) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
