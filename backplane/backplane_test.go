package backplane_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wshub/wshub/backplane"
	_ "github.com/wshub/wshub/backplane/memory"
)

// Open hands the options given to it to the scheme's opener, with the
// default for what was not given, so an opener never sees a nil logger.
func TestOpenPassesOptionsToTheOpener(t *testing.T) {
	var got []backplane.OpenOptions
	backplane.Register("test-open-options", func(ctx context.Context, u *url.URL, o backplane.OpenOptions) (backplane.Backplane, error) {
		got = append(got, o)
		return backplane.Open(ctx, "memory://")
	})
	mine := slog.New(slog.NewTextHandler(io.Discard, nil))
	for name, tc := range map[string]struct {
		opts []backplane.OpenOption
		want *slog.Logger
	}{
		"none":           {nil, slog.Default()},
		"WithLogger":     {[]backplane.OpenOption{backplane.WithLogger(mine)}, mine},
		"WithLogger nil": {[]backplane.OpenOption{backplane.WithLogger(nil)}, slog.Default()},
		"nil option":     {[]backplane.OpenOption{nil, backplane.WithLogger(mine)}, mine},
	} {
		t.Run(name, func(t *testing.T) {
			got = nil
			bp, err := backplane.Open(context.Background(), "test-open-options://", tc.opts...)
			require.NoError(t, err)
			require.NoError(t, bp.Close())
			require.Len(t, got, 1)
			assert.Same(t, tc.want, got[0].Logger)
		})
	}
}

func TestOpenUnknownScheme(t *testing.T) {
	_, err := backplane.Open(context.Background(), "nosuch://", backplane.WithLogger(nil))
	assert.ErrorIs(t, err, backplane.ErrUnknownScheme)
}
