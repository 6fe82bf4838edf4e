package schema_test

import (
	"errors"
	"fmt"

	"github.com/natter/natter/internal/schema"
)

func ExampleRegistry_Validate() {
	r, err := schema.Load(schema.Config{})
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Validate(schema.Client, "chat.send", []byte(`{"room":"general","text":"hi"}`)))

	err = r.Validate(schema.Client, "chat.send", []byte(`{"room":"a room","text":"hi","colour":"red"}`))
	var verr *schema.ValidationError
	if errors.As(err, &verr) {
		for _, v := range verr.Violations {
			fmt.Printf("%s %s: %s\n", v.Field, v.Rule, v.Message)
		}
	}

	err = r.Validate(schema.Client, "chat.send", []byte(`{"room":"a room","text":""}`))
	if errors.As(err, &verr) {
		for _, v := range verr.Violations {
			fmt.Printf("%s %s: %s\n", v.Field, v.Rule, v.Message)
		}
	}
	// Output:
	// <nil>
	// colour unknown_field: unknown field "colour"
	// room string.pattern: does not match regex pattern `^[A-Za-z0-9_-]+$`
	// text string.min_len: must be at least 1 characters
}
