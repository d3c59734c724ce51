module ml-playground/tests/render_template

go 1.19
