package bench

import (
	"slices"
	"testing"
)

func TestStreamWrites(t *testing.T) {
	tests := []struct {
		name          string
		before, after map[string]uint64
		want          []streamCount
		total         uint64
		gone          []string
	}{
		{"none", map[string]uint64{}, map[string]uint64{}, nil, 0, nil},
		{"no JetStream at either end", nil, nil, nil, 0, nil},
		{
			"grew and unchanged",
			map[string]uint64{"KV_natter_presence": 100, "natter_events": 7},
			map[string]uint64{"KV_natter_presence": 1100, "natter_events": 7},
			[]streamCount{{"KV_natter_presence", 1000}, {"natter_events", 0}}, 1000, nil,
		},
		{
			"created in the window counts from 0",
			map[string]uint64{"a": 5},
			map[string]uint64{"a": 6, "b": 3},
			[]streamCount{{"a", 1}, {"b", 3}}, 4, nil,
		},
		{
			"recreated in the window counts its new sequence",
			map[string]uint64{"a": 50},
			map[string]uint64{"a": 2},
			[]streamCount{{"a", 2}}, 2, nil,
		},
		{
			"deleted in the window is not counted",
			map[string]uint64{"a": 5, "gone2": 1, "gone1": 9},
			map[string]uint64{"a": 5},
			[]streamCount{{"a", 0}}, 0, []string{"gone1", "gone2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, total, gone := streamWrites(tt.before, tt.after)
			if !slices.Equal(got, tt.want) || total != tt.total || !slices.Equal(gone, tt.gone) {
				t.Fatalf("got %v, %d, gone %v; want %v, %d, gone %v", got, total, gone, tt.want, tt.total, tt.gone)
			}
		})
	}
}

func TestStreamKey(t *testing.T) {
	tests := []struct{ name, want string }{
		{"KV_natter_presence", "js_writes_kv_natter_presence"},
		{"natter_events", "js_writes_natter_events"},
		{"OBJ_my-bucket", "js_writes_obj_my_bucket"},
		{"a:b$c", "js_writes_a_b_c"},
		{"ünï", "js_writes___n__"}, // every byte of a multi-byte rune
	}
	for _, tt := range tests {
		if got := streamKey(tt.name); got != tt.want {
			t.Errorf("streamKey(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestStreamFields: one field per stream in name order; names that map to
// one key are added up and reported.
func TestStreamFields(t *testing.T) {
	var l line
	merged := streamFields(&l, []streamCount{{"KV_x", 3}, {"a-b", 1}, {"a_b", 2}, {"kv_x", 4}, {"z", 0}})
	want := []Field{{"js_writes_kv_x", "7"}, {"js_writes_a_b", "3"}, {"js_writes_z", "0"}}
	if !slices.Equal(l.fields, want) {
		t.Fatalf("fields %v, want %v", l.fields, want)
	}
	if wantMerged := []string{"js_writes_kv_x: KV_x, kv_x", "js_writes_a_b: a-b, a_b"}; !slices.Equal(merged, wantMerged) {
		t.Fatalf("merged %v, want %v", merged, wantMerged)
	}
}
